"""Diagnostics: pure tensor functions (``functional``) and one diagnostic pass (``probe``)."""

from faeval.diagnostics.functional import (
    mean_cosine,
    mean_norm,
    sample_cosines,
    sample_norms,
    true_gradients,
)
from faeval.diagnostics.probe import LayerFigures, measure

__all__ = [
    "LayerFigures",
    "mean_cosine",
    "mean_norm",
    "measure",
    "sample_cosines",
    "sample_norms",
    "true_gradients",
]
