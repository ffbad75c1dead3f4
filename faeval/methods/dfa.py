"""DFA: direct feedback alignment."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from faeval.backbones import ResMLP, Trace
from faeval.methods.base import BackboneFactory, CreditMethod, output_error
from faeval.methods.feedback import FeedbackMatrices, resolve_seed


class DFA(CreditMethod):
    """Direct feedback alignment: a_l = e·B_l for l = 0..L.

    e = softmax(logits) − onehot(y) is the output error and B_l a fixed random C×|h_l|
    matrix per layer, standing in for the transposed Jacobian from h_l to the logits.

    Args:
        feedback_seed: seed of the feedback draw; default the run's seed.
        input_shape, num_classes, backbone, optimizer, penalty: see ``CreditMethod``.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        backbone: BackboneFactory = ResMLP,
        optimizer: OptimizerCallable = torch.optim.Adam,
        penalty: float = 0.0,
        feedback_seed: int | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, backbone, optimizer, penalty)
        self.feedback = self.draw_feedback(resolve_seed(feedback_seed))

    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """A fresh set of feedback matrices shaped for this backbone."""
        dims = [math.prod(s) for s in self.backbone.state_shapes()]
        return FeedbackMatrices([(self.backbone.num_classes, d) for d in dims], seed)

    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        e = output_error(trace.logits, y)
        # (B, C) @ (C, |h_l|) -> (B, |h_l|): e·B_l plays ∂ℓ/∂h_l
        return [(e @ self.feedback[l]).view_as(h) for l, h in enumerate(trace.states)]
