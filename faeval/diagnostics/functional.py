"""Pure tensor functions of the diagnostic protocol (no modules, no state).

Every norm and cosine is taken per sample over the whole flattened state, in float64, and
then averaged over samples. Nothing is clamped: a zero norm gives NaN, never a number that
looks valid. Two pitfalls this avoids: ``F.cosine_similarity`` clamps norms at 1e-8 and so
returns a biased value at ‖g‖ ≈ 1e-10, and ``tensor.norm(-1)`` is the norm of order −1 over
all elements, not the L2 norm over the last dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from faeval.backbones.base import LayeredBackbone, Trace


def sample_norms(t: Tensor) -> Tensor:
    """‖t_i‖₂ over each sample's flattened state, in float64. (B, ...) -> (B,)."""
    return torch.linalg.vector_norm(t.detach().flatten(1).double(), ord=2, dim=1)


def mean_norm(t: Tensor) -> float:
    """Per-sample L2 norm, then the mean over samples."""
    return sample_norms(t).mean().item()


def sample_cosines(a: Tensor, g: Tensor) -> Tensor:
    """cos(a_i, g_i) per sample, in float64, with no epsilon: a zero norm gives NaN.

    (B, ...), (B, ...) -> (B,).
    """
    a64, g64 = a.detach().flatten(1).double(), g.detach().flatten(1).double()
    dot = (a64 * g64).sum(1)
    return dot / (sample_norms(a64) * sample_norms(g64))


def mean_cosine(a: Tensor, g: Tensor) -> float:
    """Per-sample cosine, then the mean over samples (NaN if any sample is unmeasurable)."""
    return sample_cosines(a, g).mean().item()


def scaled_error(a: Tensor, g: Tensor) -> tuple[float, float]:
    """How far a credit is from a gradient up to one factor: (‖a − c·g‖ / ‖c·g‖, c).

    c = ⟨a, g⟩ / ‖g‖² is the best factor, one for the whole batch; both figures over the
    whole flattened batch, in float64, unclamped (NaN where g is zero). An error at
    rounding level with c > 0 says that a is g (c = 1) or g with its own learning rate.

    Args:
        a: credits (B, ...).
        g: the gradients they are compared with, same shape and scale (B, ...).
    """
    a64, g64 = a.detach().flatten().double(), g.detach().flatten().double()
    scale = (a64 @ g64) / (g64 @ g64)
    error = torch.linalg.vector_norm(a64 - scale * g64) / torch.linalg.vector_norm(scale * g64)
    return error.item(), scale.item()


def matrix_angle(w: Tensor, b: Tensor) -> float:
    """The angle between W and B, each flattened, in degrees (BioTorch's alignment).

    In float64 with no epsilon (NaN where a norm is 0); the cosine is clipped to [−1, 1]
    only against rounding, as BioTorch does, before the arccos.
    """
    w64, b64 = w.detach().flatten().double(), b.detach().flatten().double()
    cos = (w64 @ b64) / (torch.linalg.vector_norm(w64) * torch.linalg.vector_norm(b64))
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).item()


def norm_ratio(w: Tensor, b: Tensor) -> float:
    """‖B‖ / ‖W‖ over all entries (BioTorch's weight ratio), in float64."""
    w64, b64 = w.detach().double(), b.detach().double()
    return (torch.linalg.vector_norm(b64) / torch.linalg.vector_norm(w64)).item()


def true_gradients(
    backbone: LayeredBackbone, h0: Tensor, y: Tensor, inputs: Tensor | None = None
) -> tuple[Trace, list[Tensor]]:
    """g_l = ∂ℓ̄/∂h_l for l = 0..L, with ℓ̄ the batch's mean cross-entropy.

    Each sample's row carries the 1/N factor of the mean (docs/notation.md's convention, on which
    the 1e-7 floor is defined). Only activation gradients are formed: autograd skips every
    weight gradient, and the embedding is not differentiated at all.

    Args:
        backbone: the network.
        h0: the embedding output h_0 of the batch.
        y: labels.
        inputs: the inputs x that gave h0, kept in the trace for credits that need them
            (``Trace.inputs``).

    Returns:
        The detached forward trace from h0 and the gradients g_0..g_L.
    """
    with torch.enable_grad():
        trace = backbone.trace_from(h0.detach().requires_grad_(True))
        grads = torch.autograd.grad(F.cross_entropy(trace.logits, y), trace.states)
    trace.inputs = inputs
    return trace.detached(), list(grads)
