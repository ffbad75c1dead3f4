"""Methods: one LightningModule each, sharing the training step of ``CreditMethod``."""

from faeval.methods.base import CreditMethod
from faeval.methods.bp import BP
from faeval.methods.brsf import BRSF
from faeval.methods.common import FeedbackMatrices
from faeval.methods.credit_bridge import CreditBridge
from faeval.methods.dfa import DFA
from faeval.methods.drl import DRL
from faeval.methods.drtp import DRTP
from faeval.methods.dtp import DTP
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
from faeval.methods.ldrl import LDRL
from faeval.methods.pc import PC
from faeval.methods.pepita import PEPITA
from faeval.methods.state_bridge import StateBridge
from faeval.methods.target_prop import TargetPropagation
from faeval.methods.tp import TP
from faeval.methods.usf import USF

__all__ = [
    "BP",
    "BRSF",
    "DFA",
    "DRL",
    "DRTP",
    "DTP",
    "EP",
    "FA",
    "FF",
    "FRSF",
    "KP",
    "LDRL",
    "PC",
    "PEPITA",
    "TP",
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
    "TargetPropagation",
]
