"""Backbones: plain ``nn.Module``s exposing the layered interface (embed, blocks, readout)."""

from faeval.backbones.base import LayeredBackbone, Trace
from faeval.backbones.cnn import SmallCNN
from faeval.backbones.mlp import MLP
from faeval.backbones.resmlp import ResMLP
from faeval.backbones.student import StudentNet
from faeval.backbones.vit import ViTMini
from faeval.backbones.wrapped import Wrapped

__all__ = [
    "MLP",
    "LayeredBackbone",
    "ResMLP",
    "SmallCNN",
    "StudentNet",
    "Trace",
    "ViTMini",
    "Wrapped",
]
