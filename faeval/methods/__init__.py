"""Methods: one LightningModule each, sharing the training step of ``CreditMethod``."""

from faeval.methods.base import CreditMethod
from faeval.methods.bp import BP
from faeval.methods.brsf import BRSF
from faeval.methods.common import FeedbackMatrices
from faeval.methods.credit_bridge import CreditBridge
from faeval.methods.dfa import DFA
from faeval.methods.drtp import DRTP
from faeval.methods.ep import EP
from faeval.methods.fa import FA
from faeval.methods.feedback import FeedbackMethod
from faeval.methods.ff import FF
from faeval.methods.forward_gradient import ForwardGradient
from faeval.methods.frozen import FrozenBlocks
from faeval.methods.frsf import FRSF
from faeval.methods.kp import KP
from faeval.methods.layer_fa import LayerFA
from faeval.methods.layerwise import LayerFeedbackMethod
from faeval.methods.pc import PC
from faeval.methods.pepita import PEPITA
from faeval.methods.state_bridge import StateBridge
from faeval.methods.usf import USF

__all__ = [
    "BP",
    "BRSF",
    "DFA",
    "DRTP",
    "EP",
    "FA",
    "FF",
    "FRSF",
    "KP",
    "PC",
    "PEPITA",
    "USF",
    "CreditBridge",
    "CreditMethod",
    "FeedbackMatrices",
    "FeedbackMethod",
    "ForwardGradient",
    "FrozenBlocks",
    "LayerFA",
    "LayerFeedbackMethod",
    "StateBridge",
]
