"""Pieces several methods share: the output error, fixed random feedback, DFA's direct credit
and the small helper nets that bridge and value methods train."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from faeval.backbones import LayeredBackbone, Trace


def output_error(logits: Tensor, y: Tensor) -> Tensor:
    """e = softmax(logits) − onehot(y) = ∂ℓ_i/∂logits_i for cross-entropy. (B, C).

    In the logits' dtype, so that it meets feedback matrices of the model's dtype (float64
    for a model moved with ``.double()``); a 16-bit softmax is taken in float32 first.
    """
    wide = torch.promote_types(logits.dtype, torch.float32)
    e = torch.softmax(logits.detach(), dim=1, dtype=wide)
    e[torch.arange(len(y), device=y.device), y] -= 1
    return e.to(logits.dtype)


def state_sizes(backbone: LayeredBackbone) -> list[int]:
    """|h_l| for l = 0..L: each state's per-sample size, flattened."""
    return [math.prod(s) for s in backbone.state_shapes()]


def normal_rows(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Entries N(0, 1/rows): v (B, rows) @ B (rows, cols) keeps the norm of v on average."""
    return torch.randn(shape, generator=gen) / math.sqrt(shape[0])


class FeedbackMatrices(nn.Module):
    """Matrices B_0..B_{n-1}, drawn once from a seeded generator (entries N(0, 1/rows)).

    With 1/rows variance, v·B keeps the norm of v on average, whatever the shapes. They are
    buffers: never trained, in every checkpoint.

    Args:
        shapes: the shape of each matrix: (rows, cols) for v (B, rows) @ B (rows, cols) ->
            (B, cols); any shape with another ``draw``.
        seed: seed of the draw.
        draw: draws one matrix of a shape from the generator (default ``normal_rows``).
    """

    def __init__(
        self,
        shapes: list[tuple[int, ...]],
        seed: int,
        draw: Callable[[tuple[int, ...], torch.Generator], Tensor] = normal_rows,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.count = len(shapes)
        for i, shape in enumerate(shapes):
            self.register_buffer(f"B{i}", draw(tuple(shape), gen))

    def __len__(self) -> int:
        return self.count

    def project(self, i: int, v: Tensor) -> Tensor:
        """v·B_i: (N, rows) @ (rows, cols) -> (N, cols).

        Credits go through here rather than ``@`` on ``self[i]``, so that stacked feedback
        (``faeval.stacked``, one draw per seed) can multiply each seed's rows by its own B_i.
        """
        return v @ self[i]

    def __getitem__(self, i: int) -> Tensor:
        """B_i.

        Raises:
            RuntimeError: B_i is missing. A credit never falls back to the true gradient
                (that would make every cosine read 1.0).
        """
        try:
            return self._buffers[f"B{i}"]
        except KeyError:
            raise RuntimeError(
                f"feedback matrix B{i} is missing (have {sorted(self._buffers)}); the credit "
                "cannot be computed. Load a complete faeval checkpoint or rebuild the method."
            ) from None


def direct_feedback(backbone: LayeredBackbone, seed: int) -> FeedbackMatrices:
    """DFA's draw: B_0..B_L, each C×|h_l|, from ``seed``."""
    return FeedbackMatrices([(backbone.num_classes, d) for d in state_sizes(backbone)], seed)


def direct_credits(feedback: FeedbackMatrices, trace: Trace, y: Tensor) -> list[Tensor]:
    """DFA's credit a_l = e·B_l for l = 0..L, each shaped like h_l."""
    return projected_credits(feedback, trace, output_error(trace.logits, y))


def projected_credits(feedback: FeedbackMatrices, trace: Trace, signal: Tensor) -> list[Tensor]:
    """a_l = signal·B_l for l = 0..L, each shaped like h_l (DFA's error, DRTP's target)."""
    # (B, C) @ (C, |h_l|) -> (B, |h_l|): signal·B_l plays ∂ℓ/∂h_l
    return [feedback.project(l, signal).view_as(h) for l, h in enumerate(trace.states)]


def mlp(d_in: int, d_out: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` linear layers d_in -> width -> … -> d_out with GELU between (depth 1: linear)."""
    dims = [d_in] + [width] * (depth - 1) + [d_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def helper_nets(dims: list[int], d_out: int, width: int, depth: int, seed: int) -> nn.ModuleList:
    """One ``mlp`` per input size, initialised from ``seed`` (apart from the global stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.ModuleList(mlp(d, d_out, width, depth) for d in dims)
