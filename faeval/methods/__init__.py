"""Methods: one LightningModule each, sharing the training step of ``CreditMethod``."""

from faeval.methods.base import CreditMethod
from faeval.methods.bp import BP
from faeval.methods.common import FeedbackMatrices
from faeval.methods.credit_bridge import CreditBridge
from faeval.methods.dfa import DFA
from faeval.methods.ep import EP
from faeval.methods.fa import FA
from faeval.methods.feedback import FeedbackMethod
from faeval.methods.frozen import FrozenBlocks
from faeval.methods.state_bridge import StateBridge

__all__ = [
    "BP",
    "DFA",
    "EP",
    "FA",
    "CreditBridge",
    "CreditMethod",
    "FeedbackMatrices",
    "FeedbackMethod",
    "FrozenBlocks",
    "StateBridge",
]
