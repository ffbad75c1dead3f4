"""Backbones: plain ``nn.Module``s exposing the layered interface (embed, blocks, readout)."""

from faeval.backbones.base import LayeredBackbone, Trace
from faeval.backbones.resmlp import ResMLP

__all__ = ["LayeredBackbone", "ResMLP", "Trace"]
