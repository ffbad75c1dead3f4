"""BP: ordinary backpropagation, the reference."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor
from typing_extensions import override

from faeval.backbones import Trace
from faeval.diagnostics.functional import true_gradients
from faeval.methods.base import CreditMethod


class BP(CreditMethod):
    """Backprop: a_l = ∂ℓ_i/∂h_l exactly.

    Training backpropagates the cross-entropy through the connected network, which gives
    every parameter the same gradient as the shared local update with exact credits, at the
    cost of one backward pass. ``credits`` computes the exact a_l explicitly for the
    diagnostics. See ``CreditMethod`` for the arguments.
    """

    local: ClassVar[bool] = False
    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        # Autograd of the mean loss gives g_l = a_l / N: scale back to one sample's loss.
        _, grads = true_gradients(self.backbone, trace.states[0], y)
        return [g * len(y) for g in grads]
