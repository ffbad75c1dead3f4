"""Methods: one LightningModule each, sharing the training step of ``CreditMethod``."""

from faeval.methods.base import CreditMethod
from faeval.methods.bp import BP
from faeval.methods.dfa import DFA
from faeval.methods.fa import FA
from faeval.methods.feedback import FeedbackMatrices
from faeval.methods.frozen import FrozenBlocks

__all__ = ["BP", "DFA", "FA", "CreditMethod", "FeedbackMatrices", "FrozenBlocks"]
