"""Callbacks: they gather tensors, call the pure diagnostics and log the figures."""

from faeval.callbacks.diagnostics import Diagnostics
from faeval.callbacks.floor_stop import FloorStopping

__all__ = ["Diagnostics", "FloorStopping"]
