"""Layer-wise feedback: every linear and convolutional layer sends the error down through its
own feedback matrix B in place of its weight W.

For a layer y = x·Wᵀ + b (a convolution alike), backprop sends the error δy to the input as
δx = δy·W and gives W the gradient δyᵀ·x. With feedback, the layer sends δx = δy·B instead
(B has W's shape: it plays Wᵀ's role in the backward pass) and keeps the weight gradient
δyᵀ·x exact given the error δy it receives. Every nn.Linear and nn.Conv2d of a backbone (its
embed, blocks and readout) gets this backward; LayerNorm, BatchNorm, activations, attention
products and residual adds keep their exact one. The credit a_l is the gradient of the loss
at h_l in this modified network, and training backpropagates through it.

The feedback is attached for the duration of a ``with`` block (``feedback_attached``), so the
backbone classes do not change and the same backbone still gives the true gradients g_l to the
diagnostics outside it. The forward values are those of the plain network.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import math
from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import LayeredBackbone, Trace
from faeval.errors import ConfigError
from faeval.methods.base import CreditMethod
from faeval.methods.ep import running_statistics_frozen

#: The layers that take feedback: each one's weight has the shape of its feedback matrix.
FEEDBACK_LAYERS = (nn.Linear, nn.Conv2d)
OTHER_CONVOLUTIONS = (
    nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)  # fmt: skip
#: The way out of a backbone the mechanism refuses.
OTHER_BACKBONE = "pick another --model.backbone, or a block-level method (FA, DFA)"


def feedback_layers(backbone: LayeredBackbone) -> list[tuple[str, nn.Module]]:
    """Every nn.Linear and nn.Conv2d of the backbone, with its name, in module order (with
    seeds stacked, their stacked layers: each offers ``forward_with_feedback(x, B)``).

    Raises:
        ConfigError: the backbone has a convolution this mechanism does not handle (another
            dimension, a transposed one, string padding or a padding mode other than zeros).
    """
    layers = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d) and (
            isinstance(module.padding, str) or module.padding_mode != "zeros"
        ):
            raise ConfigError(
                f"layer-wise feedback handles zero-padded convolutions with numeric padding; "
                f"{type(backbone).__name__}.{name} has padding={module.padding!r}, "
                f"padding_mode={module.padding_mode!r}; {OTHER_BACKBONE}"
            )
        if isinstance(module, OTHER_CONVOLUTIONS):
            raise ConfigError(
                f"layer-wise feedback handles nn.Linear and nn.Conv2d; "
                f"{type(backbone).__name__}.{name} is a {type(module).__name__}; {OTHER_BACKBONE}"
            )
        if isinstance(module, FEEDBACK_LAYERS) or hasattr(module, "forward_with_feedback"):
            layers.append((name, module))  # the latter: K seeds' layer (faeval.stacked)
    return layers


def seed_shape(layer: nn.Module) -> tuple[int, ...]:
    """The shape of one seed's weight W: a layer of K stacked seeds holds (K, *shape)."""
    shape = tuple(layer.weight.shape)
    return shape if isinstance(layer, FEEDBACK_LAYERS) else shape[1:]


def conv_options(layer: nn.Module) -> dict | None:
    """A convolution's stride, padding, dilation and groups; None for a linear layer."""
    if not isinstance(layer, nn.Conv2d):
        return None
    return dict(
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
    )


class FeedbackGrad(torch.autograd.Function):
    """A linear or convolutional layer whose backward sends the error through B, not W.

    Forward: y = layer(x; W, b), the plain layer (``conv``: a convolution's options, from
    ``conv_options``; None for a linear layer). Backward, given δy: δx = δy·B (for a
    convolution, the transposed convolution with B), δW = δyᵀ·x and δb = Σ δy exactly, and
    δB = δW, which only a method that trains B asks for (Kolen–Pollack). Computed in δy's
    dtype, as autocast's backward does.
    """

    @staticmethod
    @override
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor, conv: dict | None
    ):
        if conv is not None:
            return F.conv2d(x, weight, bias, **conv)
        return F.linear(x, weight, bias)

    @staticmethod
    @override
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, feedback, conv = inputs
        ctx.save_for_backward(x, feedback)
        ctx.conv, ctx.weight_shape = conv, weight.shape

    @staticmethod
    @override
    def backward(ctx, grad: Tensor):
        x, feedback = ctx.saved_tensors
        need_x, need_w, need_b, need_feedback, _ = ctx.needs_input_grad
        conv, x, feedback = ctx.conv, x.to(grad.dtype), feedback.to(grad.dtype)
        grad_x = grad_w = grad_b = None
        if conv is not None:
            if need_x:  # the transposed convolution with B plays J_xᵀ
                grad_x = torch.nn.grad.conv2d_input(x.shape, feedback, grad, **conv)
            if need_w or need_feedback:
                grad_w = torch.nn.grad.conv2d_weight(x, ctx.weight_shape, grad, **conv)
            if need_b:
                grad_b = grad.sum((0, 2, 3))
        else:
            if need_x:
                grad_x = grad @ feedback  # (..., out) @ (out, in) -> (..., in): B plays W
            flat = grad.reshape(-1, grad.shape[-1])  # (N, out), N = every leading position
            if need_w or need_feedback:
                grad_w = flat.T @ x.reshape(-1, x.shape[-1])  # (out, N) @ (N, in) -> (out, in)
            if need_b:
                grad_b = flat.sum(0)
        return grad_x, grad_w if need_w else None, grad_b, grad_w if need_feedback else None, None


def _forward_with_feedback(layer: nn.Module, feedback: Tensor, x: Tensor) -> Tensor:
    if isinstance(layer, FEEDBACK_LAYERS):
        return FeedbackGrad.apply(x, layer.weight, layer.bias, feedback, conv_options(layer))
    return layer.forward_with_feedback(x, feedback)  # seeds stacked: each through its own B


@contextlib.contextmanager
def feedback_attached(layers: list[nn.Module], feedback: list[Tensor]) -> Iterator[None]:
    """Inside the block, each layer's backward uses its feedback matrix (``FeedbackGrad``).

    The layers' own forward is shadowed for the block only (an instance attribute over the
    class's method), so no backbone class changes and the plain backward is back afterwards.

    Raises:
        ValueError: the counts differ, or a feedback matrix does not have its weight's shape.
    """
    if len(layers) != len(feedback):
        raise ValueError(f"{len(layers)} layers take feedback but {len(feedback)} matrices given")
    for layer, b in zip(layers, feedback, strict=True):
        if b.shape != layer.weight.shape:
            raise ValueError(
                f"feedback of shape {tuple(b.shape)} for a {type(layer).__name__} whose weight "
                f"is {tuple(layer.weight.shape)}: B must have W's shape"
            )
    try:
        for layer, b in zip(layers, feedback, strict=True):
            layer.forward = functools.partial(_forward_with_feedback, layer, b)
        yield
    finally:
        for layer in layers:
            vars(layer).pop("forward", None)


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of this shape, as ``nn.init`` counts them."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def xavier_std(shape: tuple[int, ...]) -> float:
    """√(2 / (fan_in + fan_out)): the std of Xavier's init, BioTorch's scale of uSF's sign(W)."""
    fan_in, fan_out = fans(shape)
    return math.sqrt(2.0 / (fan_in + fan_out))


#: The stream of the fixed draws (LayerFA's B, KP's initial B, FRSF's |M|): ``mixed_seed``'s
#: first word, so that feedback never repeats the weights' own init draws.
FIXED_DRAW = 0
#: The stream of BRSF's draws, one per step: (seed, ``STEP_DRAWS``, t).
STEP_DRAWS = 1


def xavier_uniform(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """U(−a, a) with a = √3·``xavier_std``: BioTorch's draw of FA's feedback."""
    bound = math.sqrt(3.0) * xavier_std(shape)
    return (2 * torch.rand(shape, generator=gen) - 1) * bound


def xavier_magnitudes(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """|M| with M Xavier uniform, BioTorch's magnitudes of brSF and frSF: |U(−a, a)| is
    U(0, a), drawn as such (one pass over the memory, which BRSF pays every step)."""
    return torch.rand(shape, generator=gen).mul_(math.sqrt(3.0) * xavier_std(shape))


class LayerFeedbackMethod(CreditMethod):
    """Base of the layer-wise feedback methods: a subclass only says its feedback matrices.

    Training backpropagates the cross-entropy through the network with every layer's backward
    using its feedback matrix (``local = False``, like BP: inside a block the feedback path is
    used too, so no ⟨f_l, a_l⟩ surrogate is needed). The credit a_l is the gradient of one
    sample's loss at h_l in the same modified network. With B = W everywhere this is BP.

    Args:
        *args, **kwargs: the arguments of ``CreditMethod`` (``input_shape``,
            ``num_classes``, ``backbone``, ``optimizer``, ``penalty``).

    Raises:
        ConfigError: the backbone has a layer the mechanism does not handle.
    """

    local: ClassVar[bool] = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        feedback_layers(self.backbone)  # refuse an unsupported backbone now, saying why

    def layers(self) -> list[tuple[str, nn.Module]]:
        """The layers that take feedback, with their names (``feedback_layers``)."""
        return feedback_layers(self.backbone)

    def weights(self) -> list[Tensor]:
        """Each layer's weight W, in the order of ``layers()``."""
        return [layer.weight for _, layer in self.layers()]

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """The shape of each layer's weight W, hence of its feedback matrix B (one seed's)."""
        return [seed_shape(layer) for _, layer in self.layers()]

    @abc.abstractmethod
    def feedback_weights(self) -> list[Tensor]:
        """B for each layer of ``layers()``, in order: what the next backward pass uses."""
        raise NotImplementedError

    @override
    def feedback_pairs(self) -> list[tuple[str, Tensor, Tensor]]:
        weights = self.feedback_weights()
        return [(n, m.weight, b) for (n, m), b in zip(self.layers(), weights, strict=True)]

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Inside, the backbone's layers use this method's feedback in their backward."""
        with feedback_attached([m for _, m in self.layers()], self.feedback_weights()):
            yield

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        with self.attached():
            return super().training_step(batch, batch_idx)

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        with torch.enable_grad(), running_statistics_frozen(self.backbone), self.attached():
            run = self.backbone.trace_from(trace.states[0].detach().requires_grad_(True))
            loss = F.cross_entropy(run.logits, y, reduction="sum")  # Σ_i ℓ_i: one sample's scale
            return list(torch.autograd.grad(loss, run.states))  # ∂ℓ_i/∂h_l through the B paths
