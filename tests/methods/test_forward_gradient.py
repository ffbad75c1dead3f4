"""ForwardGradient: one draw is (g·v)v with g from autograd, the mean over draws tends to g
within the bound its variance sets, the update is the vjp of the credit, the draws resume."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP, ViTMini
from faeval.data import TensorBatches
from faeval.errors import ConfigError
from faeval.methods import ForwardGradient
from faeval.methods.forward_gradient import directional_derivatives
from faeval.seeding import mixed_seed
from tests.helpers import GradRecorder, quiet_trainer, reference_states


def tiny(directions: int = 1, **kwargs) -> ForwardGradient:
    torch.manual_seed(0)
    backbone = partial(ResMLP, d_hidden=6, num_blocks=2, w2_std=0.5)
    return ForwardGradient((5,), 3, backbone=backbone, directions=directions, **kwargs)


def sample_gradients(backbone, x, y) -> list[torch.Tensor]:
    """∂ℓ_i/∂h_l by autograd through a forward written out here (Σ_i ℓ_i: per-sample rows)."""
    states, logits = reference_states(backbone, x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    return [h.grad.detach() for h in states]


def directions_drawn(seed: int, updates: int, shapes, k: int = 1) -> list[torch.Tensor]:
    """The step's directions, drawn here from the documented stream (seed, 3, t)."""
    gen = torch.Generator().manual_seed(mixed_seed(seed, 3, updates))
    return [torch.randn((k, *s), generator=gen) for s in shapes]


def test_one_draw_is_the_directional_derivative_times_the_direction():
    method = tiny().double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    grads = sample_gradients(method.backbone, x, y)
    trace = method.backbone.trace(x).detached()
    credits = method.credits(trace, y)
    vs = directions_drawn(method.draw_seed, 0, [h.shape for h in trace.states])
    for layer, (a, g, v) in enumerate(zip(credits, grads, vs, strict=True)):
        v = v[0].double()
        want = (g * v).sum(1, keepdim=True) * v  # (g_i·v_i) v_i per sample
        torch.testing.assert_close(a, want, rtol=1e-9, atol=1e-12, msg=f"layer {layer}")


def test_the_mean_over_draws_tends_to_the_gradient_within_its_standard_error():
    k = 4000
    method = tiny(directions=k).double()
    x, y = torch.randn(3, 5, dtype=torch.float64), torch.tensor([1, 0, 2])
    grads = sample_gradients(method.backbone, x, y)
    credits = method.credits(method.backbone.trace(x).detached(), y)
    for layer, (a, g) in enumerate(zip(credits, grads, strict=True)):
        # Var[(g·v) v_j] = ‖g‖² + g_j² for v ~ N(0, I): the mean of K draws is within
        # 5 standard errors of g_j at every one of the 54 coordinates (a false alarm ~3e-5).
        std = torch.sqrt((g.pow(2).sum(1, keepdim=True) + g.pow(2)) / k)
        assert ((a - g).abs() <= 5 * std).all(), f"layer {layer}: {(a - g).abs() / std}"
        # and far from a biased estimate: twice the gradient is many errors away
        assert ((2 * g - a).abs() > 5 * std).any(), f"layer {layer}"


def test_training_gives_each_module_the_vjp_of_its_credit(tmp_path):
    method = tiny(directions=2)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    bb = method.backbone
    grads = sample_gradients(bb, x, y)
    states, _ = reference_states(bb, x)
    vs = directions_drawn(method.draw_seed, 0, [h.shape for h in states], k=2)
    wants = {}  # at the weights before the step
    for l, module in [(0, bb.embed), (1, bb.blocks[0]), (2, bb.blocks[1])]:
        credit = ((grads[l] * vs[l]).sum(-1, keepdim=True) * vs[l]).mean(0)  # mean of 2 draws
        out = module(x) if l == 0 else module(states[l - 1].detach())
        want = torch.autograd.grad(out, list(module.parameters()), credit / len(y))
        prefix = "backbone.embed." if l == 0 else f"backbone.blocks.{l - 1}."
        for (name, _), w in zip(module.named_parameters(), want, strict=True):
            wants[prefix + name] = w
    recorder = GradRecorder()
    loader = TensorBatches(x, y, batch_size=8)
    quiet_trainer(tmp_path, max_steps=1, callbacks=[recorder]).fit(
        method, train_dataloaders=loader, val_dataloaders=loader
    )
    for name, want in wants.items():
        torch.testing.assert_close(recorder.grads[0][name], want, rtol=1e-4, atol=1e-7)
    assert method.updates == 1  # the next step draws anew


def test_draws_follow_the_step_count_and_resume_from_the_state_dict():
    method = tiny()
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    trace = method.backbone.trace(x).detached()
    first = method.credits(trace, y)
    assert all(torch.equal(a, b) for a, b in zip(first, method.credits(trace, y), strict=True))
    method.updates = 7
    seventh = method.credits(trace, y)
    assert not torch.equal(first[1], seventh[1])
    restored = tiny(draw_seed=method.draw_seed + 1)
    restored.load_state_dict(method.state_dict())
    assert (restored.draw_seed, restored.updates) == (method.draw_seed, 7)
    again = restored.credits(trace, y)
    assert all(torch.equal(a, b) for a, b in zip(seventh, again, strict=True))


def test_draw_seed_defaults_to_the_run_seed_and_directions_must_be_positive():
    torch.manual_seed(11)
    method = ForwardGradient((5,), 3, backbone=partial(ResMLP, d_hidden=4, num_blocks=1))
    assert method.draw_seed == 11
    with pytest.raises(ConfigError, match="directions >= 1"):
        tiny(directions=0)
    assert math.isfinite(float(method.directions))


@pytest.mark.parametrize("net", ["ResMLP", "ViTMini"])
def test_the_forward_mode_tangent_is_autograds_gradient_dotted_with_the_direction(net):
    """jvp's ∂ℓ_i/∂h_l·v_i equals Σ_j (∂ℓ_i/∂h_l)_j v_ij from reverse mode, to rounding."""
    torch.manual_seed(4)
    if net == "ResMLP":
        bb, x = ResMLP((5,), 3, d_hidden=6, num_blocks=2, w2_std=0.5), torch.randn(4, 5)
    else:
        bb = ViTMini((3, 8, 8), 3, patch_size=4, d_model=8, num_blocks=2, num_heads=2)
        x = torch.randn(4, 3, 8, 8)
    bb = bb.double().eval()
    x, y = x.double(), torch.tensor([0, 2, 1, 1])
    states, logits = reference_states(bb, x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    for layer, h in enumerate(states):
        v = torch.randn_like(h)
        want = (h.grad * v).flatten(1).sum(1)  # (B,)
        got = directional_derivatives(partial(bb.forward_from, layer), h.detach(), y, v)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=f"layer {layer}")


def test_local_losses_differentiate_each_layers_own_head_and_train_the_heads_exactly():
    method = tiny(local_losses=True, head_lr=0.01).double()
    bb, heads = method.backbone, method.heads
    assert len(heads) == bb.num_blocks  # h_0..h_{L-1}; h_L uses the network's readout
    assert method.trained_helpers() == (heads, 0.01)
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    states, logits = reference_states(bb, x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    top_grad = states[-1].grad
    local_grads = []
    for head, h in zip(heads, states, strict=False):
        h = h.detach().requires_grad_(True)
        F.cross_entropy(head(h), y, reduction="sum").backward()  # ∂ℓ_l,i/∂h_l per sample
        local_grads.append(h.grad)
    vs = directions_drawn(method.draw_seed, 0, [h.shape for h in states])
    credits = method.credits(bb.trace(x).detached(), y)
    for layer, (a, g, v) in enumerate(zip(credits, [*local_grads, top_grad], vs, strict=True)):
        v = v[0].double()
        want = (g * v).sum(1, keepdim=True) * v
        torch.testing.assert_close(a, want, rtol=1e-9, atol=1e-12, msg=f"layer {layer}")

    # the heads' gradients: their own mean cross-entropy on the detached states, exactly
    objective, _ = method.step_objective(x, y)
    got = torch.autograd.grad(objective, list(heads.parameters()))
    reference = sum(
        F.cross_entropy(head(h.detach()), y) for head, h in zip(heads, states, strict=False)
    )
    want = torch.autograd.grad(reference, list(heads.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)
    assert any(k.startswith("heads.") for k in method.state_dict())
    with pytest.raises(ConfigError, match="head_lr > 0"):
        tiny(local_losses=True, head_lr=0.0)
