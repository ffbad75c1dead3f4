"""Stacked leaf modules: K seeds' copies of one layer, applied to a seed-major batch at once.

A stacked batch holds K·B rows, seed-major: rows k·B…(k+1)·B belong to seed k. Everything
per sample (activations, pooling, attention over a sample's tokens, per-sample losses) works
on it unchanged; only the modules that own parameters or running statistics need to know K.
Each of them here holds every tensor of the K originals stacked along a new first dimension,
(K, *shape) under the original's name, so seed k's state is ``tensor[k]`` and the state
dict of a stack has exactly the keys of one seed's.

Each module is checked against K separate calls of the original (tests/stacked/
test_modules.py). Linear layers and feedback products are one batched matmul for all seeds,
with a lone run's operands forward and backward: bit for bit on the CPU. LayerNorm,
convolutions and BatchNorm run one kernel per seed on the CPU (bit for bit, and no slower
there: measured); on an accelerator one kernel serves all seeds (a normalisation followed by
each seed's affine, a grouped convolution, a BatchNorm over seeds folded into channels),
which rounds differently (within 1e-6 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones.vit import PatchEmbed
from faeval.methods.common import FeedbackMatrices
from faeval.methods.layerwise import FeedbackGrad


def stacked_parameter(tensors: list[Tensor]) -> nn.Parameter:
    """The K tensors of one parameter stacked as (K, *shape), keeping ``requires_grad``.

    Raises:
        ValueError: the seeds disagree on whether the parameter trains.
    """
    flags = {t.requires_grad for t in tensors}
    if len(flags) > 1:
        raise ValueError("the seeds disagree on which parameters train; they cannot be stacked")
    return nn.Parameter(torch.stack([t.detach() for t in tensors]), requires_grad=flags.pop())


def stacked_parameter_list(lists: list[nn.ParameterList]) -> nn.ParameterList:
    """K seeds' lists of parameters (KP's trained feedback): each entry stacked (K, *shape)."""
    return nn.ParameterList(
        stacked_parameter(list(entries)) for entries in zip(*lists, strict=True)
    )


def stacked_buffer(tensors: list[Tensor]) -> Tensor:
    """The K tensors of one buffer stacked as (K, *shape)."""
    return torch.stack([t.detach() for t in tensors])


#: Below rows·in·out = 400 per matrix, ATen's CPU ``bmm``/``baddbmm`` switch to a naive kernel
#: that sums in another order than the BLAS ``addmm`` of a lone run (LinearAlgebra.cpp), and a
#: product with a side of 1 is a matrix-vector product there: such products run one per seed
#: instead (tests/stacked/test_modules.py checks the boundary).
SMALL_CPU_MATMUL = 400


def per_seed_kernels(x: Tensor) -> bool:
    """Whether layers whose one-kernel form rounds otherwise run one kernel per seed.

    On the CPU they do (bit for bit a lone run's, and no slower there); on an accelerator one
    kernel serves all seeds. Tests patch it to run the accelerator's form on the CPU.
    """
    return x.device.type == "cpu"


def in_forward_mode(x: Tensor) -> bool:
    """Whether ``x`` is traced by a functorch transform (ForwardGradient's ``torch.func.jvp``).

    ``_BatchedLinear`` has no forward-mode rule: one would make ``torch.compile`` break the
    compiled step's graph at every stacked layer. Under the transform a stacked layer runs a
    lone ``F.linear`` per seed instead, whose tangent is a lone run's.
    """
    return not torch.compiler.is_compiling() and torch._C._functorch.is_functorch_wrapped_tensor(x)


def per_seed_matmul(x: Tensor, inner: int, outer: int) -> bool:
    """Whether a stacked product of ``x``'s rows by (inner, outer) matrices runs per seed."""
    rows = x.numel() // inner
    return per_seed_kernels(x) and (
        rows * inner * outer < SMALL_CPU_MATMUL or min(rows, inner, outer) == 1
    )


class _BatchedLinear(torch.autograd.Function):
    """y_k = x_k·W_kᵀ + b_k for every seed k, with the backward products a lone run forms.

    Autograd's own ``baddbmm`` backward forms the weight gradient as x_kᵀ·g_k, where a lone
    ``F.linear`` forms (g_kᵀ·x_k); BLAS rounds the two differently. Here the backward takes the
    lone run's operands: g·W for the input, gᵀ·x for the weight, the row sum for the bias.
    Its products are plain ops, so it is differentiable again (the credits' autograd uses it).
    """

    @staticmethod
    @override
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        w = weight.transpose(1, 2)  # (K, in, out)
        # (K, N, in) @ (K, in, out) (+ (K, 1, out)) -> (K, N, out)
        return torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)

    @staticmethod
    @override
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)
        device = x.device.type  # the backward multiplies under the forward's autocast
        ctx.amp = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))

    @staticmethod
    @override
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = (
            need and engine_needs(ctx, i) for i, need in enumerate(ctx.needs_input_grad)
        )
        device, dtype, enabled = ctx.amp
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            grad_x = torch.bmm(grad, weight) if need_x else None  # (K, N, out) @ (K, out, in)
            grad_w = torch.bmm(grad.transpose(1, 2), x) if need_w else None  # (K,out,N)@(K,N,in)
        grad_b = grad.sum(1) if need_b else None  # (K, out)
        return grad_x, grad_w, grad_b


def engine_needs(ctx, i: int) -> bool:
    """Whether the backward running now uses input i's gradient of the custom function ``ctx``.

    ``ctx.needs_input_grad`` says only which inputs required grad in the forward. An
    ``autograd.grad`` over the states (PC's and EP's relaxation steps) needs no weight gradient,
    and autograd's own linear backward skips it there; a custom backward computes it unless it
    asks the engine (a product as large as the input's gradient, wasted at every step).
    Leaving out a gradient nobody reads changes no other. Under ``torch.compile`` the backward
    is traced once for every case: all that required grad.
    """
    if torch.compiler.is_compiling():
        return True
    node = ctx.next_functions[i][0]
    if node is None:
        return True
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError:  # a leaf that autograd.grad asked for by name: it is needed
        return True
    except AttributeError:  # a torch without the engine's query: compute all, as before
        return True


def join(parts: list[Tensor]) -> Tensor:
    """The seeds' outputs one after the other (one seed's as it is, without a copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def seeds_first(x: Tensor, seeds: int) -> Tensor:
    """(K·B, ...) -> (K, B·…, last): each seed's rows as one matrix for a batched matmul."""
    return x.reshape(seeds, -1, x.shape[-1])


def to_channels(x: Tensor, seeds: int) -> Tensor:
    """(K·B, C, H, W) -> (B, K·C, H, W): seeds folded into channels, seed-major within a row."""
    _, c, *space = x.shape
    return x.reshape(seeds, -1, c, *space).transpose(0, 1).reshape(-1, seeds * c, *space)


def from_channels(x: Tensor, seeds: int) -> Tensor:
    """(B, K·C, H, W) -> (K·B, C, H, W): the inverse of ``to_channels``."""
    b, kc, *space = x.shape
    return x.reshape(b, seeds, kc // seeds, *space).transpose(0, 1).reshape(-1, kc // seeds, *space)


class StackedLinear(nn.Module):
    """K linear layers: y = x·W_kᵀ + b_k on seed k's rows. weight (K, out, in), bias (K, out)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.seeds = len(linears)
        self.in_features = linears[0].in_features
        self.out_features = linears[0].out_features
        self.weight = stacked_parameter([m.weight for m in linears])
        bias = [m.bias for m in linears]
        self.bias = None if bias[0] is None else stacked_parameter(bias)

    @override
    def forward(self, x: Tensor) -> Tensor:
        bias = [None] * self.seeds if self.bias is None else self.bias
        if self.seeds == 1:  # one seed: a lone run's own layer
            return F.linear(x, self.weight[0], bias[0])
        rows_per_seed = x.reshape(self.seeds, -1, self.in_features)[0]
        if per_seed_matmul(rows_per_seed, self.in_features, self.out_features) or (
            per_seed_kernels(x) and in_forward_mode(x)
        ):
            seeds = zip(x.chunk(self.seeds), self.weight, bias, strict=True)
            return torch.cat([F.linear(xk, w, b) for xk, w, b in seeds])
        xs, w = seeds_first(x, self.seeds), self.weight
        if per_seed_kernels(x):  # a lone run's products, forward and backward: bit for bit
            y = _BatchedLinear.apply(xs, w, self.bias)
        elif self.bias is None:  # autograd's own batched products: no Python in the backward
            y = torch.bmm(xs, w.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), xs, w.transpose(1, 2))
        return y.reshape(*x.shape[:-1], self.out_features)  # (K, B·…, out) -> (K·B, …, out)

    def forward_with_feedback(self, x: Tensor, feedback: Tensor) -> Tensor:
        """The layer whose backward sends each seed's error through its own B (K, out, in)
        instead of W (layer-wise feedback, ``FeedbackGrad``): one seed at a time, on every
        device, with a lone run's operands forward and backward."""
        bias = [None] * self.seeds if self.bias is None else self.bias
        parts = zip(x.chunk(self.seeds), self.weight, bias, feedback, strict=True)
        return join([FeedbackGrad.apply(xk, w, b, bk, None) for xk, w, b, bk in parts])


class StackedLayerNorm(nn.Module):
    """K LayerNorms over the last dimensions, each seed with its own affine (K, *shape)."""

    def __init__(self, norms: list[nn.LayerNorm]) -> None:
        super().__init__()
        first = norms[0]
        if first.elementwise_affine and first.bias is None:
            raise ValueError("a LayerNorm with a weight but no bias is not stackable")
        self.seeds = len(norms)
        self.normalized_shape = first.normalized_shape
        self.eps = first.eps
        self.weight = self.bias = None
        if first.elementwise_affine:
            self.weight = stacked_parameter([m.weight for m in norms])
            self.bias = stacked_parameter([m.bias for m in norms])

    @override
    def forward(self, x: Tensor) -> Tensor:
        if self.weight is None:
            return F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        if self.seeds == 1:
            return F.layer_norm(x, self.normalized_shape, self.weight[0], self.bias[0], self.eps)
        if per_seed_kernels(x):  # one kernel per seed: bit for bit a lone run's
            return torch.cat(
                [
                    F.layer_norm(xk, self.normalized_shape, w, b, self.eps)
                    for xk, w, b in zip(x.chunk(self.seeds), self.weight, self.bias, strict=True)
                ]
            )
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        shape = (self.seeds, -1, *self.normalized_shape)
        affine = (self.seeds, 1, *self.normalized_shape)
        # (K, B·…, *shape) · (K, 1, *shape) + (K, 1, *shape): seed k's affine on its rows
        out = torch.addcmul(self.bias.view(affine), y.reshape(shape), self.weight.view(affine))
        return out.reshape(x.shape)


class StackedConv2d(nn.Module):
    """K convolutions as one grouped convolution with the seeds folded into the channels.

    weight (K, C_out, C_in/groups, kh, kw), bias (K, C_out).
    """

    def __init__(self, convs: list[nn.Conv2d]) -> None:
        super().__init__()
        first = convs[0]
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            raise ValueError(
                f"a Conv2d with padding {first.padding!r} ({first.padding_mode}) is not stackable"
            )
        self.seeds = len(convs)
        self.stride, self.padding = first.stride, first.padding
        self.dilation, self.groups = first.dilation, first.groups
        self.out_channels = first.out_channels
        self.weight = stacked_parameter([m.weight for m in convs])
        bias = [m.bias for m in convs]
        self.bias = None if bias[0] is None else stacked_parameter(bias)

    @override
    def forward(self, x: Tensor) -> Tensor:
        k = self.seeds
        if k == 1 or per_seed_kernels(x):  # one kernel per seed: grouped rounds otherwise
            bias = [None] * k if self.bias is None else self.bias
            return join(
                [
                    F.conv2d(xk, w, b, self.stride, self.padding, self.dilation, self.groups)
                    for xk, w, b in zip(x.chunk(k), self.weight, bias, strict=True)
                ]
            )
        y = F.conv2d(
            to_channels(x, k),  # (B, K·C_in, H, W)
            self.weight.flatten(0, 1),  # (K·C_out, C_in/groups, kh, kw): seed k's in group k
            None if self.bias is None else self.bias.flatten(),
            self.stride,
            self.padding,
            self.dilation,
            k * self.groups,
        )
        return from_channels(y, k)  # (B, K·C_out, H', W') -> (K·B, C_out, H', W')

    def forward_with_feedback(self, x: Tensor, feedback: Tensor) -> Tensor:
        """The convolution whose backward sends each seed's error through its own B (K, *W's
        shape) instead of W (layer-wise feedback, ``FeedbackGrad``): one seed at a time."""
        conv = dict(
            stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups
        )
        bias = [None] * self.seeds if self.bias is None else self.bias
        parts = zip(x.chunk(self.seeds), self.weight, bias, feedback, strict=True)
        return join([FeedbackGrad.apply(xk, w, b, bk, conv) for xk, w, b, bk in parts])


class StackedBatchNorm2d(nn.BatchNorm2d):
    """K BatchNorms, each with its own batch statistics, running statistics and affine.

    The seeds are folded into the channels, so one kernel normalises each seed's channels
    over that seed's rows only. A subclass of ``nn.BatchNorm2d``: code that freezes the running
    statistics (EP's relaxation) finds it as it finds the original.
    """

    def __init__(self, norms: list[nn.BatchNorm2d]) -> None:
        nn.Module.__init__(self)
        first = norms[0]
        if first.momentum is None or not first.track_running_stats:
            raise ValueError(
                "a BatchNorm2d without running statistics or with a cumulative average "
                "(momentum=None) is not stackable"
            )
        self.seeds = len(norms)
        self.num_features, self.eps = first.num_features, first.eps
        self.momentum, self.affine = first.momentum, first.affine
        self.track_running_stats = True
        self.weight = self.bias = None
        if first.affine:
            self.weight = stacked_parameter([m.weight for m in norms])
            self.bias = stacked_parameter([m.bias for m in norms])
        self.register_buffer("running_mean", stacked_buffer([m.running_mean for m in norms]))
        self.register_buffer("running_var", stacked_buffer([m.running_var for m in norms]))
        self.register_buffer(
            "num_batches_tracked", stacked_buffer([m.num_batches_tracked for m in norms])
        )

    @override
    def forward(self, x: Tensor) -> Tensor:
        update = self.training and self.track_running_stats
        if update:
            self.num_batches_tracked.add_(1)
        running = not self.training or self.track_running_stats
        factor = self.momentum if update else 0.0
        if self.seeds == 1 or per_seed_kernels(x):  # one kernel per seed, as convolutions
            return join(
                [
                    F.batch_norm(
                        xk,
                        self.running_mean[k] if running else None,  # rows: updated in place
                        self.running_var[k] if running else None,
                        None if self.weight is None else self.weight[k],
                        None if self.bias is None else self.bias[k],
                        self.training,
                        factor,
                        self.eps,
                    )
                    for k, xk in enumerate(x.chunk(self.seeds))
                ]
            )
        y = F.batch_norm(
            to_channels(x, self.seeds),  # (B, K·C, H, W)
            self.running_mean.view(-1) if running else None,  # views: updated in place
            self.running_var.view(-1) if running else None,
            None if self.weight is None else self.weight.flatten(),
            None if self.bias is None else self.bias.flatten(),
            self.training,
            factor,
            self.eps,
        )
        return from_channels(y, self.seeds)


class StackedPatchEmbed(nn.Module):
    """ViT-Mini's patch embedding for K seeds: stacked projection, class token and positions."""

    def __init__(self, embeds: list[PatchEmbed]) -> None:
        super().__init__()
        self.seeds = len(embeds)
        cls = [m.cls for m in embeds]
        self.cls = None if cls[0] is None else stacked_parameter(cls)  # (K, 1, 1, d)
        self.pos = stacked_parameter([m.pos for m in embeds])  # (K, 1, T, d)
        self.proj = StackedConv2d([m.proj for m in embeds])

    @override
    def forward(self, x: Tensor) -> Tensor:
        tokens = self.proj(x).flatten(2).transpose(1, 2)  # (K·B, d, R, C) -> (K·B, R·C, d)
        k, d = self.seeds, tokens.shape[-1]
        if self.cls is not None:
            cls = self.cls.expand(k, len(x) // k, 1, d).reshape(len(x), 1, d)
            tokens = torch.cat([cls, tokens], dim=1)  # (K·B, T, d)
        # (K, B, T, d) + (K, 1, T, d): seed k's positions on its rows
        return (tokens.reshape(k, -1, *tokens.shape[1:]) + self.pos).reshape(tokens.shape)


class StackedFeedbackMatrices(FeedbackMatrices):
    """K seeds' feedback draws: B_i stacked as (K, rows, cols), one batched matmul per use."""

    def __init__(self, draws: list[FeedbackMatrices]) -> None:
        nn.Module.__init__(self)
        self.seeds = len(draws)
        self.count = len(draws[0])
        for i in range(self.count):
            self.register_buffer(f"B{i}", stacked_buffer([d[i] for d in draws]))

    @override
    def project(self, i: int, v: Tensor) -> Tensor:
        b = self[i]  # (K, rows, cols)
        if self.seeds == 1:
            return v @ b[0]
        if per_seed_matmul(v.reshape(self.seeds, -1, b.shape[1])[0], *b.shape[1:]):
            return torch.cat([vk @ bk for vk, bk in zip(v.chunk(self.seeds), b, strict=True)])
        # (K, B, rows) @ (K, rows, cols) -> (K·B, cols): v·B_i with seed k's own B_i
        return torch.bmm(seeds_first(v, self.seeds), b).reshape(-1, b.shape[-1])
