"""SmallCNN: conv–BatchNorm–ReLU blocks whose hidden state is the feature map."""

from __future__ import annotations

import itertools

from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones.base import LayeredBackbone
from faeval.errors import ConfigError


class ConvBlock(nn.Sequential):
    """ReLU(BN(conv3×3(h))), then a 2×2 max-pool when it downsamples (odd sides round up,
    so 28×28 Fashion-MNIST goes 14, 7, 4, 2, 1 as 32×32 CIFAR goes 16, 8, 4, 2, 1)."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        layers = [
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),  # BN holds the bias
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        ]
        if downsample:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        super().__init__(*layers)


class SmallCNN(LayeredBackbone):
    """h_0 = stem(x); h_l = F_l(h_{l-1}) (or h_{l-1} + F_l(h_{l-1})); logits = head(pool(h_L)).

    The stem is a conv–BN–ReLU block with a 2×2 max-pool (C×H×W -> width×H/2×W/2). Each block
    F_l is conv3×3–BatchNorm–ReLU. With ``downsample`` (the default) a block doubles the
    channels and halves the sides, so the shapes differ from layer to layer and the block is
    the map itself (h_l = f_l: the residual add is off whatever ``residual_add`` says);
    without it every block keeps the shape and ``residual_add`` chooses
    h_l = h_{l-1} + F_l(h_{l-1}). The readout is a global average pool and a linear head:
    there is no terminal normalisation.

    The hidden state is the feature map (B, C, H, W), taken per sample and flattened by the
    diagnostics and the feedback matrices. At the defaults on 32×32 inputs the states hold
    4096, 2048, 1024, 512 and 256 values, so FA's dense |h_l|×|h_{l-1}| feedback stays small.

    BatchNorm: training uses batch statistics (every method's local update goes through
    them); the diagnostics (``faeval.diagnostics.measure_layers``, hence the per-epoch callback and
    ``faeval audit``) put the network in eval mode, so each probe sample is measured with the
    running statistics, independently of the rest of the probe batch, and the running
    statistics are not updated by a diagnostic pass.

    Args:
        input_shape: (channels, height, width), any sides (odd sides round up when halved).
        num_classes: C.
        width: channels of the stem output h_0.
        num_blocks: depth L.
        downsample: each block doubles the channels and halves the sides.
        residual_add: add h_{l-1} to the block output where the shapes allow, that is when
            ``downsample`` is off; the ``residual_add`` attribute says whether it is applied.

    Raises:
        ConfigError: the input is not an image.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 16,
        num_blocks: int = 4,
        downsample: bool = True,
        residual_add: bool = True,
    ) -> None:
        super().__init__(input_shape, num_classes)
        if width < 1 or num_blocks < 1:
            raise ConfigError(
                f"SmallCNN needs width >= 1 and num_blocks >= 1, got width={width}, "
                f"num_blocks={num_blocks}"
            )
        if len(input_shape) != 3:
            raise ConfigError(
                f"SmallCNN needs image inputs (channels, height, width), the data gives "
                f"{tuple(input_shape)}; pick image data (--data FashionMNIST, CIFAR10) or a "
                "vector backbone (--model.backbone ResMLP)"
            )
        self.residual_add = residual_add and not downsample  # the add needs equal shapes
        self.embed = ConvBlock(input_shape[0], width, downsample=True)
        channels = [width * (2**k if downsample else 1) for k in range(num_blocks + 1)]
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, downsample) for c_in, c_out in itertools.pairwise(channels)
        )
        self.head = nn.Linear(channels[-1], num_classes)

    @override
    def readout(self, h: Tensor) -> Tensor:
        return self.head(h.mean((2, 3)))  # (B, C_L, H, W) -> (B, C_L) -> (B, num_classes)
