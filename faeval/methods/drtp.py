"""DRTP: direct random target projection."""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from faeval.backbones import Trace
from faeval.methods.common import FeedbackMatrices, direct_feedback, projected_credits
from faeval.methods.feedback import FeedbackMethod


class DRTP(FeedbackMethod):
    """Direct random target projection (Frenkel, Lefebvre & Bol 2021): a_l = −onehot(y)·B_l.

    The target stands in for the output error: B_l is a fixed random C×|h_l| matrix per
    layer (l = 0..L), drawn as DFA's, and no error from the output reaches a hidden layer
    (the readout still gets its exact cross-entropy gradient), so the credit needs neither
    a backward pass nor the output itself.

    Sign convention. The DRTP code (ChFrenkel/DirectRandomTargetProjection, function.py)
    uses +onehot(y)·B for DRTP and (ŷ − onehot(y))·B for DFA, both as the gradient estimate
    that the optimizer descends. faeval writes −onehot(y)·B_l. With B_l drawn from a
    distribution symmetric about 0 (N(0, 1/C) entries), B_l and −B_l are equally likely, so
    the two signs are the same method in law: faeval's credit with B is the code's with −B.
    The minus keeps DFA's sign on the target class for the same B: DFA's credit is
    e·B_l = p·B_l − onehot(y)·B_l (p the softmax), whose target row enters with weight
    p_y − 1 < 0, and DRTP's is that credit without the prediction's part p·B_l, the target
    row with weight −1; the code's sign would make it +1.

    The credit does not vanish once the output is right (there is no error in it): each
    block keeps pushing f_l along B_l's target row. The paper's networks bound their units
    (tanh, sigmoid); on faeval's pre-LN residual blocks nothing does, and the states grow
    without limit (Fashion-MNIST, ResMLP d=256 L=4: ×2.6e7 in 5 epochs, diagnostics (a) and
    (b) firing; the README's table).
    See ``FeedbackMethod`` for the arguments.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """B_0..B_L, each C×|h_l| (DFA's draw)."""
        return direct_feedback(self.backbone, seed)

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        target = F.one_hot(y, self.backbone.num_classes).to(self.feedback[0].dtype)  # (B, C)
        return projected_credits(self.feedback, trace, -target)  # −onehot(y)·B_l plays ∂ℓ/∂h_l
