"""EP: credits against autograd's gradients, the β and symmetric orders, K = 0, one step."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from faeval.backbones import ResMLP, SmallCNN
from faeval.methods import EP


def make_ep(w2_std: float = 0.01, **kwargs) -> EP:
    torch.manual_seed(0)
    backbone = functools.partial(ResMLP, d_hidden=16, num_blocks=4, w2_std=w2_std)
    return EP((16,), 4, backbone=backbone, **kwargs)


def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 16, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def trace_and_gradients(method: EP, x: torch.Tensor, y: torch.Tensor):
    """The detached trace and ∂(Σ_i ℓ_i)/∂h_l by autograd over a forward written out here."""
    backbone = method.backbone
    h = backbone.embed(x).detach().requires_grad_(True)
    states = [h]
    for block in backbone.blocks:
        h = h + block(h)
        states.append(h)
    logits = backbone.readout(h)
    grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), states)
    trace = method.backbone.trace(x).detached()
    return trace, grads


def cosines(credits, grads) -> list[float]:
    """Per-sample cosine, averaged over the batch, per layer."""
    return [
        F.cosine_similarity(a.flatten(1), g.flatten(1), dim=1).mean().item()
        for a, g in zip(credits, grads, strict=True)
    ]


def rel_errors(credits, grads) -> list[float]:
    return [((a - g).norm() / g.norm()).item() for a, g in zip(credits, grads, strict=True)]


def test_error_credit_matches_gradient_at_small_beta():
    method = make_ep(beta=0.01, steps=300, step_size=0.5, tol=0.0)
    x, y = batch()
    trace, grads = trace_and_gradients(method, x, y)
    cos = cosines(method.credits(trace, y), grads)
    assert min(cos) > 0.99, cos
    assert method.steps_taken == 300


def test_symmetric_is_closer_and_error_shrinks_with_beta():
    # One-sided: bias O(β), the error shrinks ~3× for 3× smaller β; symmetric: O(β²), ~9×.
    x, y = batch()
    errors = {}
    for beta in (0.03, 0.01):
        for symmetric in (False, True):
            method = make_ep(beta=beta, steps=400, step_size=0.5, tol=0.0, symmetric=symmetric)
            trace, grads = trace_and_gradients(method, x, y)
            errors[beta, symmetric] = rel_errors(method.credits(trace, y), grads)
    for layer in range(5):
        for beta in (0.03, 0.01):
            assert errors[beta, True][layer] < errors[beta, False][layer] / 4, errors
        assert 2 < errors[0.03, False][layer] / errors[0.01, False][layer] < 4.5, errors
        assert errors[0.03, True][layer] / errors[0.01, True][layer] > 6, errors


def test_large_blocks_error_credit_holds_displacement_does_not():
    # Block Jacobians far from the identity: the relaxation needs a smaller γ and more steps.
    x, y = batch(16)
    cos = {}
    for credit in ("error", "displacement"):
        method = make_ep(w2_std=0.3, beta=0.01, steps=800, step_size=0.15, tol=1e-5, credit=credit)
        trace, grads = trace_and_gradients(method, x, y)
        cos[credit] = cosines(method.credits(trace, y), grads)
    assert min(cos["error"]) > 0.99, cos
    deep = cos["displacement"][1:]
    assert max(deep) < 0.95 and min(deep) > 0.5, cos  # an independent check: 0.60–0.82


def test_no_relaxation_gives_zero_credits():
    method = make_ep(steps=0)
    x, y = batch()
    trace, _ = trace_and_gradients(method, x, y)
    credits = method.credits(trace, y)
    assert all(
        torch.equal(a, torch.zeros_like(h)) for a, h in zip(credits, trace.states, strict=True)
    )


def test_free_state_has_zero_energy_gradient_but_the_nudge():
    # At the free state only β·ℓ pulls: one step moves h_L by −γβ·∂ℓ/∂h_L and nothing else.
    method = make_ep(beta=0.5, steps=1, step_size=0.1, tol=0.0, credit="displacement")
    x, y = batch()
    trace, grads = trace_and_gradients(method, x, y)
    credits = method.credits(trace, y)
    torch.testing.assert_close(credits[-1], 0.1 * grads[-1], rtol=1e-4, atol=1e-7)
    for a in credits[:-1]:
        assert a.abs().max() < 1e-6


def test_one_training_step(tiny_ladder, tmp_path):
    backbone = functools.partial(ResMLP, d_hidden=16, num_blocks=2)
    method = EP(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=backbone, steps=5)
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    trainer = Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(method, datamodule=tiny_ladder)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert trainer.callback_metrics["train/ep_steps"] == 5
    changed = [n for n, p in method.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("backbone.blocks.0.") for n in changed)
    assert any(n.startswith("backbone.embed.") for n in changed)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="beta > 0"):
        make_ep(beta=0.0)


def test_relaxation_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    backbone = functools.partial(SmallCNN, width=4, num_blocks=2)
    method = EP((3, 8, 8), 4, backbone=backbone, steps=5).train()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    trace = method.backbone.trace(x).detached()
    buffers = {n: b.clone() for n, b in method.backbone.named_buffers()}
    credits = method.credits(trace, y)
    assert all(torch.equal(b, buffers[n]) for n, b in method.backbone.named_buffers())
    assert all(torch.isfinite(a).all() for a in credits)
    assert credits[-1].abs().sum() > 0


def test_relaxation_stops_early_at_the_tolerance():
    method = make_ep(beta=0.01, steps=2000, step_size=0.5, tol=1e-3)
    x, y = batch()
    trace, grads = trace_and_gradients(method, x, y)
    cos = cosines(method.credits(trace, y), grads)
    assert 0 < method.steps_taken < 2000
    assert min(cos) > 0.99, cos
