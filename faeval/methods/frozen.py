"""FrozenBlocks: the baseline that tells whether a method uses depth."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable

from faeval.backbones import ResMLP
from faeval.methods.base import BackboneFactory
from faeval.methods.bp import BP


class FrozenBlocks(BP):
    """BP with every block frozen at its initialisation: only embedding and readout train.

    A method whose accuracy does not clear this baseline (diagnostic (d)) has not used its
    deep layers. See ``CreditMethod`` for the arguments.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        backbone: BackboneFactory = ResMLP,
        optimizer: OptimizerCallable = torch.optim.Adam,
        penalty: float = 0.0,
    ) -> None:
        super().__init__(input_shape, num_classes, backbone, optimizer, penalty)
        self.backbone.blocks.requires_grad_(False)
