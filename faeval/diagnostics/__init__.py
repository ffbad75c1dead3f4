"""Diagnostics: pure tensor functions (``functional``) and one diagnostic pass (``layers``)."""

from faeval.diagnostics.functional import (
    matrix_angle,
    mean_cosine,
    mean_norm,
    norm_ratio,
    sample_cosines,
    sample_norms,
    scaled_error,
    true_gradients,
)
from faeval.diagnostics.layers import LayerFigures, full_precision, measure_layers

__all__ = [
    "LayerFigures",
    "full_precision",
    "matrix_angle",
    "mean_cosine",
    "mean_norm",
    "measure_layers",
    "norm_ratio",
    "sample_cosines",
    "sample_norms",
    "scaled_error",
    "true_gradients",
]
