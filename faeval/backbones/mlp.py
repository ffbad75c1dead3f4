"""MLP: the plain multilayer perceptron of the feedback-alignment papers."""

from __future__ import annotations

import math
from typing import Literal

from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones.base import LayeredBackbone
from faeval.errors import ConfigError

#: The activations an ``MLP`` may use, by name.
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class MLP(LayeredBackbone):
    """h_0 = φ(W_0·flatten(x) + b_0); h_l = φ(W_l·h_{l-1} + b_l) for l = 1..L; logits = W·h_L + b.

    The network of the feedback-alignment papers (Lillicrap et al. 2016, Nøkland 2016, Frenkel
    et al. 2021): no residual add, no normalisation, and the states are the layers' outputs
    after the activation, so every state is bounded when φ is (tanh, sigmoid). With states
    after the activation, a credit a_l at h_l reaches the weights of layer l through φ′(z_l):
    block l's update ⟨F_l(h_{l-1}), a_l⟩ has the gradient (a_l ⊙ φ′(z_l))·h_{l-1}ᵀ, which for
    DFA and DRTP is the papers' δ_l = (B_lᵀ e) ⊙ f′(z_l). PyTorch's default initialisation.

    Args:
        input_shape: per-sample input shape (flattened by the embedding).
        num_classes: C.
        width: units per hidden layer.
        num_blocks: L, the hidden layers after the first (the embedding is hidden layer 0):
            L + 1 hidden layers in all.
        activation: φ, ``tanh``, ``sigmoid`` or ``relu``.

    Raises:
        ConfigError: width or num_blocks below 1.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: int = 256,
        num_blocks: int = 4,
        activation: Literal["tanh", "sigmoid", "relu"] = "tanh",
    ) -> None:
        super().__init__(input_shape, num_classes)
        if width < 1 or num_blocks < 1:
            raise ConfigError(
                f"MLP needs width >= 1 and num_blocks >= 1, got width={width}, "
                f"num_blocks={num_blocks}"
            )
        act = ACTIVATIONS[activation]
        self.residual_add = False
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), act())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), act()) for _ in range(num_blocks)
        )
        self.head = nn.Linear(width, num_classes)

    @override
    def readout(self, h: Tensor) -> Tensor:
        return self.head(h)  # (B, width) -> (B, C)
