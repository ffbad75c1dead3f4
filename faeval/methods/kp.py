"""KP: Kolen–Pollack learning, feedback weights trained alongside the forward weights."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import override

from faeval.errors import ConfigError
from faeval.methods.common import FeedbackMatrices
from faeval.methods.layerwise import (
    FIXED_DRAW,
    LayerFeedbackMethod,
    xavier_uniform,
)
from faeval.seeding import mixed_seed, resolve_seed


class KP(LayerFeedbackMethod):
    """Kolen–Pollack (Kolen & Pollack 1994; Akrout et al. 2019): B_k learns what W_k learns.

    Every linear and convolutional layer sends the error down as δx = δy·B_k
    (``LayerFeedbackMethod``). B_k starts random (Xavier uniform, like ``LayerFA``'s) and is
    trained: it receives W_k's gradient δyᵀ·x (in the maths, where Bᵀ multiplies the error,
    the transposed update) and the same weight decay, so one step gives

        W_k ← (1 − λ)·W_k − η·u(δyᵀ·x),     B_k ← (1 − λ)·B_k − η·u(δyᵀ·x),

    u the optimizer's update of that gradient. W_k and B_k share the gradient history and
    the optimizer, so u is the same for both (any element-wise optimizer: SGD, momentum,
    Adam), and B_k − W_k = (1 − λ)^t·(B_k − W_k at init): they converge. The decay is
    applied to both just before each optimizer step, whatever the optimizer; leave the
    optimizer's own ``weight_decay`` at 0 (Adam's acts through the gradient and would treat
    W_k and B_k differently).

    The feedback matrices are parameters (``feedback``): trained state, in every checkpoint.

    Args:
        decay: λ, the weight decay of W_k and B_k per step (0 < λ < 1).
        feedback_seed: seed of B_k's initial draw; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(
        self, *args, decay: float = 1e-3, feedback_seed: int | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        if not 0 < decay < 1:
            raise ConfigError(
                f"KP needs 0 < decay < 1 (the decay is what aligns B with W), got decay={decay}; "
                "set --model.decay (1e-3 in configs/resmlp_d256_l4_kp.yaml)"
            )
        self.decay = decay
        stream = mixed_seed(resolve_seed(feedback_seed), FIXED_DRAW)  # LayerFA's draw
        init = FeedbackMatrices(self.weight_shapes(), stream, draw=xavier_uniform)
        self.feedback = nn.ParameterList(nn.Parameter(init[k]) for k in range(len(init)))

    @override
    def feedback_weights(self) -> list[Tensor]:
        return list(self.feedback)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for w, b in zip(self.weights(), self.feedback, strict=True):
                w.mul_(1 - self.decay)
                b.mul_(1 - self.decay)
