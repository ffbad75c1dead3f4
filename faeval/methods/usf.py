"""USF: uniform sign-concordant feedback (BioTorch's ``usf``)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.layerwise import LayerFeedbackMethod, xavier_std


class USF(LayerFeedbackMethod):
    """Uniform sign-concordant feedback (Liao, Leibo & Poggio 2016): B_k = s_k·sign(W_k).

    Every linear and convolutional layer sends the error down as δx = δy·B_k
    (``LayerFeedbackMethod``), with B_k the signs of its current weights at one uniform
    magnitude s_k = √(2 / (fan_in + fan_out)), the std of Xavier's init, as BioTorch scales
    its ``usf`` layers against exploding gradients (after Xiao et al. 2018). B_k follows W_k:
    it is recomputed from W_k for every step, so it holds no state of its own. See
    ``CreditMethod`` for the arguments.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def feedback_weights(self) -> list[Tensor]:
        pairs = zip(self.weight_shapes(), self.weights(), strict=True)  # one seed's shape
        return [xavier_std(shape) * torch.sign(w.detach()) for shape, w in pairs]
