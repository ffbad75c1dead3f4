"""The synthetic ladder's nonlinearity, shared by its teacher (``faeval.data.SyntheticLadder``)
and its student (``faeval.backbones.StudentNet``)."""

from __future__ import annotations

import torch
from torch import Tensor


def ladder_activation(z: Tensor, alpha: float) -> Tensor:
    """φ_α(z) = (1 − α)·z + α·tanh(z): α = 0 is linear, α = 1 fully nonlinear."""
    return (1 - alpha) * z + alpha * torch.tanh(z)
