"""The layered interface every backbone exposes, so one method can train any of them.

Notation (docs/notation.md): h_0 = embed(x); for l = 1..L: f_l = F_l(h_{l-1}),
h_l = combine(h_{l-1}, f_l) (h_{l-1} + f_l, or f_l with the residual add off);
logits = readout(h_L).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from typing_extensions import override

from faeval.errors import ConfigError


@dataclass
class Trace:
    """One forward pass, layer by layer.

    Attributes:
        states: h_0..h_L.
        outputs: f_1..f_L, the block outputs (the penalty and the local loss act on them).
        logits: readout(h_L).
        inputs: the batch's inputs x when the pass began at the input (``trace``), for
            credits that run the network again on a changed input (PEPITA); None when it
            began at a hidden state.
    """

    states: list[Tensor]
    outputs: list[Tensor]
    logits: Tensor
    inputs: Tensor | None = None

    def detached(self) -> Trace:
        """The same values with every graph cut: what a credit rule may look at."""
        return Trace(
            [h.detach() for h in self.states],
            [f.detach() for f in self.outputs],
            self.logits.detach(),
            None if self.inputs is None else self.inputs.detach(),
        )


class LayeredBackbone(nn.Module, abc.ABC):
    """A network written as embed -> L blocks -> readout.

    Subclasses set ``embed`` (module), ``blocks`` (``nn.ModuleList`` of the block maps F_l),
    ``residual_add`` and implement ``readout``. Hidden states may have any shape; diagnostics
    flatten them per sample.
    """

    embed: nn.Module
    blocks: nn.ModuleList
    residual_add: bool

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes

    @property
    def num_blocks(self) -> int:
        """L, the number of blocks (layers 1..L; layer 0 is the embedding)."""
        return len(self.blocks)

    def combine(self, h: Tensor, f: Tensor) -> Tensor:
        """h_l from h_{l-1} and f_l."""
        return h + f if self.residual_add else f

    @abc.abstractmethod
    def readout(self, h: Tensor) -> Tensor:
        """Logits from h_L (terminal normalisation and head)."""
        raise NotImplementedError

    def trace_from(self, h: Tensor, layer: int = 0, detach: bool = False) -> Trace:
        """Runs blocks layer+1..L and the readout from the hidden state h_layer.

        The one block loop of every backbone: the forward pass, the trace of the training
        step, the true gradients of the diagnostics and ρ's perturbed passes all run it.

        Args:
            h: the hidden state h_layer of a batch.
            layer: the index of ``h`` (0: the embedding output).
            detach: cut the graph at every block input and before the readout, so that each
                block sees ``F_l(h_{l-1}.detach())`` and the readout sees ``h_L.detach()``:
                the graph then reaches each module's parameters only through its own output.

        Returns:
            States h_layer..h_L, outputs f_{layer+1}..f_L and the logits.
        """
        states, outputs = [h], []
        for block in self.blocks[layer:]:
            h_in = h.detach() if detach else h
            f = block(h_in)
            h = self.combine(h_in, f)
            states.append(h)
            outputs.append(f)
        logits = self.readout(h.detach() if detach else h)
        return Trace(states, outputs, logits)

    def forward_from(self, layer: int, h: Tensor) -> Tensor:
        """Logits from the hidden state h_layer, running blocks layer+1..L."""
        return self.trace_from(h, layer).logits

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.trace_from(self.embed(x)).logits

    def trace(self, x: Tensor, detach: bool = False) -> Trace:
        """Forward pass from the input, keeping every state h_0..h_L and block output.

        Args:
            x: a batch of inputs.
            detach: see ``trace_from``.
        """
        trace = self.trace_from(self.embed(x), 0, detach)
        trace.inputs = x
        return trace

    @torch.no_grad()
    def state_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shapes of h_0..h_L, found by a dry run in eval mode."""
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            x = torch.zeros((1, *self.input_shape), dtype=p.dtype, device=p.device)
            trace = self.trace(x)
        finally:
            self.train(was_training)
        return [tuple(h.shape[1:]) for h in trace.states]

    def check_input(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Fail before training if this backbone was built for other data.

        Raises:
            ValueError: the data's sample shape or class count differs from the backbone's.
        """
        if tuple(input_shape) != self.input_shape or num_classes != self.num_classes:
            raise ConfigError(
                f"{type(self).__name__} was built for inputs {self.input_shape} with "
                f"{self.num_classes} classes, but the data gives {tuple(input_shape)} with "
                f"{num_classes} classes; build the model from this data (faeval fit links them) "
                "or pick matching data."
            )
