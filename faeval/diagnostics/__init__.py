"""Diagnostics: pure tensor functions (``functional``) and one diagnostic pass (``layers``)."""

from faeval.diagnostics.functional import (
    mean_cosine,
    mean_norm,
    sample_cosines,
    sample_norms,
    true_gradients,
)
from faeval.diagnostics.layers import LayerFigures, full_precision, measure_layers

__all__ = [
    "LayerFigures",
    "full_precision",
    "mean_cosine",
    "mean_norm",
    "measure_layers",
    "sample_cosines",
    "sample_norms",
    "true_gradients",
]
