"""PEPITA: the output error, projected onto the input, drives a second forward pass."""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from faeval.backbones import Trace
from faeval.errors import ConfigError
from faeval.methods.base import block_penalty, local_objective
from faeval.methods.common import FeedbackMatrices, output_error
from faeval.methods.ep import running_statistics_frozen
from faeval.methods.feedback import FeedbackMethod


def pepita_uniform(shape: tuple[int, int], gen: torch.Generator, scale: float) -> Tensor:
    """F (C, input size), entries U(−1, 1)·scale·sqrt(6 / input size).

    The PEPITA code's draw (main_pytorch.py: sd = sqrt(6/nin),
    B = (rand(nin, nout)·2·sd − sd)·Bstd, Bstd = 0.05), stored transposed.
    """
    bound = math.sqrt(6 / shape[1])
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound * scale


class PEPITA(FeedbackMethod):
    """PEPITA (Dellaferrera & Kreiman 2022): a_l = h_l − h_l^mod.

    The first forward pass gives the states h_l and the output error
    e = softmax(logits) − onehot(y); the second runs the network on the modulated input
    x + e·F, with F a fixed random C×|x| projection, and gives h_l^mod. The difference
    h_l − h_l^mod plays ∂ℓ_i/∂h_l at every layer l = 0..L (the embedding is the paper's first
    layer, fed by the modulated input). No backward pass and no feedback path into the hidden
    layers: the error reaches them only through the input.

    As the PEPITA code (GiorgiaD/PEPITA, main_pytorch.py) does it: F's entries are
    U(−1, 1)·0.05·sqrt(6/|x|) (``feedback_scale`` is the 0.05, the code's ``Bstd``), e uses
    the softmax output, and x_mod = x + e·F.

    The update (``update="modulated"``, the paper's): the presynaptic activity is the
    modulated pass's. Layer l's weight moves by −(h_l − h_l^mod)·(h_{l-1}^mod)ᵀ and the top
    layer by −e^mod·(h_{L-1}^mod)ᵀ, e^mod the modulated pass's output error. faeval takes it
    through the shared local update at the second pass: the embedding gets
    ⟨embed(x_mod), a_0⟩, block l gets ⟨F_l(h_{l-1}^mod), a_l⟩, and the readout its exact
    cross-entropy gradient at h_L^mod. A linear map whose output is the state (the
    embedding's, a plain linear block's) and the head get the paper's rule exactly. The last
    linear map of a block (ResMLP's W2, StudentNet's W) gets the paper's presynaptic term with
    the state's difference as its error: the skip's share included on a residual backbone,
    pre-activations on StudentNet (whose states are), where the paper's hidden layers take the
    difference after the nonlinearity. Layers inside a block get a_l through the block's own
    Jacobian at the modulated pass, where the paper's network has one layer per block.
    ``update="forward"`` is every other method's update instead: the blocks at the first
    pass's inputs and the readout at h_L. The penalty acts on the first pass's block outputs.

    F is the method's feedback (a ``FeedbackMatrices`` of one matrix): a buffer in every
    checkpoint, drawn from ``feedback_seed``, redrawn by the protocol's null band; with seeds
    stacked, each seed's rows are projected by its own F (``feedback.project``). The second
    pass leaves BatchNorm's running statistics alone.

    Args:
        feedback_scale: the factor on F's entries (the paper's 0.05).
        update: where the presynaptic term is taken (above).
        *args, **kwargs: ``feedback_seed`` (``FeedbackMethod``) and the arguments of
            ``CreditMethod``.

    Raises:
        ConfigError: ``feedback_scale`` <= 0, or a backbone with a class token in h_0
            (ViTMini with ``pool="cls"``), which no input modulation reaches.
        ValueError: credits asked for a trace without its inputs (``Trace.inputs``).
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(
        self,
        *args,
        feedback_scale: float = 0.05,
        update: Literal["modulated", "forward"] = "modulated",
        **kwargs,
    ) -> None:
        if feedback_scale <= 0:
            raise ConfigError(
                f"PEPITA needs feedback_scale > 0, got {feedback_scale}; the paper's is 0.05"
            )
        if update not in ("modulated", "forward"):
            raise ConfigError(f"PEPITA's update is 'modulated' or 'forward', got {update!r}")
        self.feedback_scale = feedback_scale  # read by draw_feedback during the base's init
        self.update = update
        super().__init__(*args, **kwargs)
        if getattr(self.backbone.embed, "cls", None) is not None:
            raise ConfigError(
                f"PEPITA cannot train {type(self.backbone).__name__}'s class token: it does "
                "not depend on the input, so the modulated pass never changes it (a_0 = 0 "
                "there); use --model.backbone.pool mean"
            )

    @override
    def draw_feedback(self, seed: int) -> FeedbackMatrices:
        """F, C×|x|."""
        shape = (self.backbone.num_classes, math.prod(self.backbone.input_shape))
        return FeedbackMatrices(
            [shape], seed, draw=partial(pepita_uniform, scale=self.feedback_scale)
        )

    def modulated_inputs(self, trace: Trace, y: Tensor) -> Tensor:
        """x + e·F, shaped like x.

        Raises:
            ValueError: the trace has no inputs.
        """
        if trace.inputs is None:
            raise ValueError(
                "PEPITA's credit runs the network again on its modulated input, but this "
                "trace began at a hidden state; trace from the input (backbone.trace(x))"
            )
        x = trace.inputs
        e = output_error(trace.logits, y).to(x.dtype)  # (B, C), in the model's dtype (bf16 too)
        return x + self.feedback.project(0, e).view_as(x)  # (B, C) @ (C, |x|) -> x's shape

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        x_mod = self.modulated_inputs(trace, y)
        with torch.no_grad(), running_statistics_frozen(self.backbone):
            modulated = self.backbone.trace(x_mod).states
        # h_l − h_l^mod plays ∂ℓ_i/∂h_l
        return [h - m for h, m in zip(trace.states, modulated, strict=True)]

    @override
    def step_objective(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The paper's update: the local update and the readout's loss at the modulated pass."""
        if self.update == "forward":
            return super().step_objective(x, y)
        trace = self.backbone.trace(x, detach=True)
        losses = F.cross_entropy(trace.logits, y, reduction="none")  # ℓ_i of the first pass
        first = trace.detached()
        with running_statistics_frozen(self.backbone):
            modulated = self.backbone.trace(self.modulated_inputs(first, y), detach=True)
        # h_l − h_l^mod plays ∂ℓ_i/∂h_l; the modulated pass carries the presynaptic terms
        credits = [h - m.detach() for h, m in zip(first.states, modulated.states, strict=True)]
        # e^mod·(h_L^mod)ᵀ for the head: the cross-entropy at the modulated pass (h_L^mod detached)
        objective = self.batch_mean(F.cross_entropy(modulated.logits, y, reduction="none"))
        objective = objective + local_objective(modulated, credits, self.stack_size)
        if self.penalty:
            objective = objective + self.penalty * block_penalty(trace.outputs, self.stack_size)
        return objective, losses
