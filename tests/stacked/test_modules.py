"""Stacked leaf modules against K separate calls of the original, forward and backward.

On the CPU every stacked module runs a lone run's kernels, so the comparison is bit for bit
(``torch.equal``). The one-kernel forms used on an accelerator are run on the CPU too, by
patching ``per_seed_kernels``: folded BatchNorm stays bit for bit here; grouped convolutions
and the fused LayerNorm's affine round otherwise (checked within 1e-6 relative).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import faeval.stacked.modules as stacked_modules
from faeval.backbones.vit import PatchEmbed
from faeval.methods.common import FeedbackMatrices
from faeval.stacked.modules import (
    SMALL_CPU_MATMUL,
    StackedBatchNorm2d,
    StackedConv2d,
    StackedFeedbackMatrices,
    StackedLayerNorm,
    StackedLinear,
    StackedPatchEmbed,
)

K = 3


def lone_and_stacked(make, stack_cls, x_shape, *, train=True):
    """K originals (seeds 0..K−1), their stack, and a seed-major input with its gradient."""
    lone = []
    for seed in range(K):
        torch.manual_seed(seed)
        lone.append(make().train(train))
    stacked = stack_cls(lone).train(train)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(K * x_shape[0], *x_shape[1:], generator=gen)
    return lone, stacked, x


def run_both(lone, stacked, x):
    """Outputs and every gradient, of the stack and of the K originals (stacked)."""
    xs = x.clone().requires_grad_(True)
    out = stacked(xs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad_out)
    outs, x_grads = [], []
    for module, xk, gk in zip(lone, x.chunk(K), grad_out.chunk(K), strict=True):
        xk = xk.clone().requires_grad_(True)
        o = module(xk)
        o.backward(gk)
        outs.append(o)
        x_grads.append(xk.grad)
    got = {"out": out, "x": xs.grad} | {n: p.grad for n, p in stacked.named_parameters()}
    want = {"out": torch.cat(outs), "x": torch.cat(x_grads)}
    for name, _ in stacked.named_parameters():
        want[name] = torch.stack([dict(m.named_parameters())[name].grad for m in lone])
    return got, want


def assert_same(got, want, rel=0.0):
    for key, value in want.items():
        if rel == 0.0:
            assert torch.equal(got[key], value), key
        else:
            scale = value.abs().max()
            assert (got[key] - value).abs().max() <= rel * scale, key


LINEAR_SHAPES = [
    (6, 16, 16),  # 1536 products: the batched BLAS kernel
    (6, 16, 8),  # a weight gradient BLAS forms from the other side in autograd's own bmm
    (6, 16, 4),  # 384 < 400: ATen's naive bmm kernel, run per seed
    (5, 80, 1),  # a side of 1: matrix-vector in a lone run, run per seed
    (32, 1, 16),
    (2, 10, 20),  # exactly 400
]


@pytest.mark.parametrize(("rows", "d_in", "d_out"), LINEAR_SHAPES)
def test_linear_is_bit_for_bit_k_linears(rows, d_in, d_out):
    lone, stacked, x = lone_and_stacked(lambda: nn.Linear(d_in, d_out), StackedLinear, (rows, d_in))
    assert_same(*run_both(lone, stacked, x))


class CountProducts(TorchDispatchMode):
    """Counts the batched matrix products run under it, backward ones included."""

    def __init__(self) -> None:
        super().__init__()
        self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.products += func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.baddbmm)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wanted", [("x",), ("weight",), ("x", "weight", "bias")])
def test_linear_forms_only_the_gradients_the_backward_asks_for(wanted):
    # PC's and EP's relaxation take autograd.grad over the states: the weight's product (as
    # large as the input's) would be formed and thrown away at every step.
    lone, stacked, x = lone_and_stacked(lambda: nn.Linear(16, 16), StackedLinear, (6, 16))
    xs = x.clone().requires_grad_(True)
    out = stacked(xs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    inputs = {"x": xs, "weight": stacked.weight, "bias": stacked.bias}
    with CountProducts() as count:
        got = torch.autograd.grad(out, [inputs[name] for name in wanted], grad_out)
    assert count.products == len({"x", "weight"} & set(wanted))
    for k, module in enumerate(lone):
        xk = x.chunk(K)[k].clone().requires_grad_(True)
        lone_inputs = {"x": xk, "weight": module.weight, "bias": module.bias}
        want = torch.autograd.grad(
            module(xk), [lone_inputs[name] for name in wanted], grad_out.chunk(K)[k]
        )
        for name, g, w in zip(wanted, got, want, strict=True):
            assert torch.equal(g.chunk(K)[k] if name == "x" else g[k], w), (name, k)


def test_linear_in_the_accelerators_form(monkeypatch):
    # autograd's own baddbmm backward (no Python in it) forms the weight gradient as xᵀ·g
    monkeypatch.setattr(stacked_modules, "per_seed_kernels", lambda x: False)
    lone, stacked, x = lone_and_stacked(lambda: nn.Linear(16, 8), StackedLinear, (6, 16))
    assert_same(*run_both(lone, stacked, x), rel=1e-6)


def test_one_seed_runs_the_lone_layers_themselves():
    for make, cls, shape in (
        (lambda: nn.Linear(16, 8), StackedLinear, (6, 16)),
        (lambda: nn.LayerNorm(8), StackedLayerNorm, (6, 8)),
        (lambda: nn.Conv2d(3, 4, 3), StackedConv2d, (2, 3, 6, 6)),
    ):
        torch.manual_seed(0)
        lone = make()
        x = torch.randn(*shape)
        assert torch.equal(cls([lone])(x), lone(x))


def test_linear_on_token_states_and_without_bias():
    make = lambda: nn.Linear(16, 24, bias=False)  # noqa: E731
    lone, stacked, x = lone_and_stacked(make, StackedLinear, (4, 9, 16))
    assert_same(*run_both(lone, stacked, x))


def test_the_small_matmul_boundary_is_atens():
    # The boundary below which ATen's CPU bmm sums in another order than a lone addmm.
    gen = torch.Generator().manual_seed(0)
    for product, equal in ((SMALL_CPU_MATMUL - 8, False), (SMALL_CPU_MATMUL, True)):
        rows, d_out = 2, 2
        d_in = product // (rows * d_out)
        x, w = torch.randn(K, rows, d_in, generator=gen), torch.randn(K, d_out, d_in, generator=gen)
        b = torch.randn(K, d_out, generator=gen)
        lone = torch.stack([nn.functional.linear(x[k], w[k], b[k]) for k in range(K)])
        batched = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        assert torch.equal(lone, batched) == equal, product


@pytest.mark.parametrize("one_kernel", [False, True])
def test_layer_norm(monkeypatch, one_kernel):
    if one_kernel:
        monkeypatch.setattr(stacked_modules, "per_seed_kernels", lambda x: False)
    make = lambda: nn.LayerNorm(32)  # noqa: E731
    lone, stacked, x = lone_and_stacked(make, StackedLayerNorm, (8, 5, 32))
    for m in lone:  # an affine that is not the identity
        nn.init.normal_(m.weight)
        nn.init.normal_(m.bias)
    stacked = StackedLayerNorm(lone)
    assert_same(*run_both(lone, stacked, x * 3), rel=1e-6 if one_kernel else 0.0)


@pytest.mark.parametrize("one_kernel", [False, True])
@pytest.mark.parametrize(
    ("c_in", "kwargs"),
    [(4, {"kernel_size": 3, "padding": 1}), (3, {"kernel_size": 3, "padding": 1, "bias": False})],
)
def test_conv2d(monkeypatch, one_kernel, c_in, kwargs):
    if one_kernel:
        monkeypatch.setattr(stacked_modules, "per_seed_kernels", lambda x: False)
    make = lambda: nn.Conv2d(c_in, 8, **kwargs)  # noqa: E731
    lone, stacked, x = lone_and_stacked(make, StackedConv2d, (5, c_in, 8, 8))
    # One grouped kernel for all seeds rounds otherwise than a lone kernel (the accelerator's form).
    assert_same(*run_both(lone, stacked, x), rel=1e-6 if one_kernel else 0.0)


@pytest.mark.parametrize("one_kernel", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_keeps_each_seeds_statistics(monkeypatch, one_kernel, train):
    if one_kernel:
        monkeypatch.setattr(stacked_modules, "per_seed_kernels", lambda x: False)
    lone, stacked, x = lone_and_stacked(
        lambda: nn.BatchNorm2d(8), StackedBatchNorm2d, (6, 8, 4, 4), train=train
    )
    for k, m in enumerate(lone):  # running statistics that differ by seed
        m.running_mean.normal_(generator=torch.Generator().manual_seed(k))
        m.running_var.uniform_(0.5, 2.0)
    stacked = StackedBatchNorm2d(lone).train(train)
    x = x + torch.arange(K).repeat_interleave(6).view(-1, 1, 1, 1)  # seeds' rows differ in mean
    assert_same(*run_both(lone, stacked, x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        want = torch.stack([getattr(m, name) for m in lone])
        assert torch.equal(getattr(stacked, name), want), name


def test_patch_embedding_with_class_token():
    make = lambda: PatchEmbed(3, (8, 8), 4, 16, cls_token=True, init_std=0.02)  # noqa: E731
    lone, stacked, x = lone_and_stacked(make, StackedPatchEmbed, (2, 3, 8, 8))
    assert_same(*run_both(lone, stacked, x), rel=1e-6)  # 3 input channels (see test_conv2d)


def test_feedback_projects_each_seeds_rows_through_its_own_draw():
    draws = [FeedbackMatrices([(4, 32), (1, 8)], seed=s) for s in range(K)]
    stacked = StackedFeedbackMatrices(draws)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(K * 16, 4, generator=gen)
    want = torch.cat([vk @ d[0] for vk, d in zip(v.chunk(K), draws, strict=True)])
    assert torch.equal(stacked.project(0, v), want)
    w = torch.randn(K * 5, 1, generator=gen)
    want = torch.cat([wk @ d[1] for wk, d in zip(w.chunk(K), draws, strict=True)])
    assert torch.equal(stacked.project(1, w), want)
    with pytest.raises(RuntimeError, match="feedback matrix B2 is missing"):
        stacked.project(2, v)


def test_linear_under_autocast_differentiates_outside_it():
    # bf16 training: the forward runs under autocast, the backward may run outside it.
    lone, stacked, x = lone_and_stacked(lambda: nn.Linear(16, 32), StackedLinear, (8, 16))
    xs = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stacked(xs)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert xs.grad.dtype == torch.float32 and stacked.weight.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.cat([m(xk) for m, xk in zip(lone, x.chunk(K), strict=True)])
    assert torch.allclose(out.float(), want.float(), rtol=1e-2, atol=1e-2)


# torch's forward AD scripts its jvp decompositions on first use, and torch deprecates the
# scripting it does itself (as faeval.methods.forward_gradient says): not about this code.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("rows,inputs,outputs", LINEAR_SHAPES)
@pytest.mark.parametrize("along", ["x", "all"])
def test_linear_forward_mode_tangents_are_the_lone_layers_bit_for_bit(rows, inputs, outputs, along):
    """ForwardGradient's torch.func.jvp through the stack: each seed's tangent is the one
    forward-mode AD gives its lone layer (along the input alone, or input, weight and bias)."""
    lone, stacked, x = lone_and_stacked(
        lambda: nn.Linear(inputs, outputs), StackedLinear, (rows, inputs)
    )
    gen = torch.Generator().manual_seed(5)
    w, b = stacked.weight.detach(), stacked.bias.detach()
    x_t, w_t, b_t = (torch.randn(t.shape, generator=gen) for t in (x, w, b))
    if along == "x":
        got = torch.func.jvp(stacked, (x,), (x_t,))[1]
    else:

        def stacked_out(x, w, b):
            return torch.func.functional_call(stacked, {"weight": w, "bias": b}, (x,))

        got = torch.func.jvp(stacked_out, (x, w, b), (x_t, w_t, b_t))[1]
    for k, module in enumerate(lone):
        xk, tk = x.chunk(K)[k], x_t.chunk(K)[k]
        wk, bk = module.weight.detach(), module.bias.detach()
        if along == "x":
            want = torch.func.jvp(module, (xk,), (tk,))[1]
        else:
            want = torch.func.jvp(nn.functional.linear, (xk, wk, bk), (tk, w_t[k], b_t[k]))[1]
        assert torch.equal(got.chunk(K)[k], want), k
