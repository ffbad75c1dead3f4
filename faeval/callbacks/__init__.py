"""Callbacks: they gather tensors, call the pure diagnostics and log the figures."""

from faeval.callbacks.diagnostics import Diagnostics
from faeval.callbacks.floor_stop import FloorStopping
from faeval.callbacks.last_checkpoint import LastCheckpoint
from faeval.callbacks.progress import LineProgress
from faeval.callbacks.protocol import Protocol

__all__ = ["Diagnostics", "FloorStopping", "LastCheckpoint", "LineProgress", "Protocol"]
