"""ρ with its controls, the null band and direction stability, against independent figures."""

from __future__ import annotations

import itertools
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP
from faeval.diagnostics import true_gradients
from faeval.methods import BP, DFA
from faeval.protocol import (
    direction_stability,
    measure_protocol,
    null_band,
    perturbation_correlation,
)
from faeval.protocol.settings import ProtocolSettings

SMALL = partial(ResMLP, d_hidden=32, num_blocks=2)


def probe_of(method, dm):
    x, y = dm.probe()
    trace, grads = true_gradients(method.backbone, method.backbone.embed(x).detach(), y)
    return trace, grads, y


def test_rho_of_bp_is_one_and_of_random_credits_is_zero(tiny_ladder):
    method = BP(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=SMALL)
    trace, grads, y = probe_of(method, tiny_ladder)
    credits = method.credits(trace, y)
    rho = perturbation_correlation(method.backbone, trace.states, y, credits, grads)
    assert min(rho.rho) >= 0.99
    assert min(rho.positive) >= 0.99
    assert max(abs(r) for r in rho.negative_mean) <= 0.05
    # The sign is seen: the negated gradient predicts the opposite change.
    neg = perturbation_correlation(method.backbone, trace.states, y, [-a for a in credits], grads)
    assert max(neg.rho) <= -0.99


def test_rho_matches_a_direct_finite_difference_correlation(tiny_ladder):
    """Layer-L ρ by hand: directions from the same generator, losses via F.cross_entropy."""
    method = DFA(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=SMALL)
    trace, grads, y = probe_of(method, tiny_ladder)
    credits = method.credits(trace, y)
    rho = perturbation_correlation(
        method.backbone, trace.states, y, credits, grads, directions=4, negative_draws=2, seed=3
    )
    net = method.backbone.double()
    gen = torch.Generator().manual_seed(3)
    true, pred = [], []
    for layer, h in enumerate(trace.states):
        h = h.double()
        for _ in range(4):
            d = torch.randn(h.shape, generator=gen, dtype=torch.float64)
            d = d / d.norm(dim=1, keepdim=True)
            if layer == len(trace.states) - 1:
                loss = F.cross_entropy(net.readout(h + 1e-3 * d), y, reduction="none")
                true.append(loss - F.cross_entropy(net.readout(h), y, reduction="none"))
                pred.append(1e-3 * (credits[layer].double() * d).sum(1))
        for _ in range(2):  # the negative control's draws, to keep the stream aligned
            torch.randn(h.shape, generator=gen, dtype=torch.float64)
    t, p = torch.cat(true), torch.cat(pred)
    expected = torch.corrcoef(torch.stack([t, p]))[0, 1].item()
    assert rho.rho[-1] == pytest.approx(expected, abs=1e-9)


def test_dfa_null_band_is_centred_at_init_and_cleared_after_training(tiny_ladder):
    L.seed_everything(0, verbose=False)
    method = DFA(
        tiny_ladder.input_shape,
        tiny_ladder.num_classes,
        backbone=SMALL,
        optimizer=partial(torch.optim.Adam, lr=1e-2),
    )
    trained_feedback = method.feedback
    trace, grads, y = probe_of(method, tiny_ladder)
    band = null_band(method, trace, grads, y, draws=8)
    assert abs(band.deep_mean) < 0.05 and band.deep_std < 0.15
    assert method.feedback is trained_feedback  # restored after the fresh draws
    L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    ).fit(method, tiny_ladder)
    method.eval()
    trace, grads, y = probe_of(method, tiny_ladder)
    band = null_band(method, trace, grads, y, draws=8)
    assert band.deep > band.deep_mean + 2 * band.deep_std
    assert band.deep > 0.15


def test_null_band_does_not_apply_without_feedback(tiny_ladder):
    method = BP(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=SMALL)
    trace, grads, y = probe_of(method, tiny_ladder)
    assert null_band(method, trace, grads, y) is None


def test_null_band_restores_the_feedback_when_a_draw_fails(tiny_ladder, monkeypatch):
    method = DFA(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=SMALL)
    trained = method.feedback
    trace, grads, y = probe_of(method, tiny_ladder)
    monkeypatch.setattr(method, "draw_feedback", lambda seed: trained)  # the training draw
    with pytest.raises(RuntimeError, match="equals the training-time feedback"):
        null_band(method, trace, grads, y)
    assert method.feedback is trained


def test_direction_stability_matches_pairwise_cosines_of_batch_gradients(tiny_ladder):
    method = BP(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=SMALL)
    x, y = tiny_ladder.probe()
    h0 = method.backbone.embed(x).detach()
    stab = direction_stability(method, h0, y, batch_size=32, num_batches=4)
    assert stab.layer == 1
    # Independent: autograd through the whole network from the inputs, per batch.
    dirs = []
    for b in range(4):
        part = slice(32 * b, 32 * (b + 1))
        h = method.backbone.embed(x[part]).detach().requires_grad_(True)
        h1 = method.backbone.combine(h, method.backbone.blocks[0](h))
        h1.retain_grad()
        F.cross_entropy(method.backbone.forward_from(1, h1), y[part]).backward()
        dirs.append(h1.grad.double().mean(0))
    cos = [
        F.cosine_similarity(dirs[i], dirs[j], dim=0).item()
        for i, j in itertools.combinations(range(4), 2)
    ]
    assert stab.gradient == pytest.approx(sum(cos) / len(cos), abs=1e-6)  # float32 grads
    assert stab.credit == pytest.approx(stab.gradient, abs=1e-9)  # BP's credit is g
    with pytest.raises(ValueError, match="probe_size"):
        direction_stability(method, h0, y, batch_size=128, num_batches=8)


def test_measure_protocol_reports_every_piece_and_notes_what_does_not_apply(tiny_ladder):
    x, y = tiny_ladder.probe()
    settings = ProtocolSettings(null_draws=2, directions=2, negative_draws=2)
    row = measure_protocol(
        BP(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=SMALL), x, y, settings
    )
    assert row["null"] is None and "not applicable" in row["null_note"]
    assert row["stability"] is None and "probe" in row["stability_note"]  # 128 < 8 × 128
    assert set(row["seconds"]) == {"null", "rho", "stability"}
    row = measure_protocol(
        DFA(tiny_ladder.input_shape, tiny_ladder.num_classes, backbone=SMALL), x, y, settings
    )
    assert row["null"]["draws"] == 2 and len(row["rho"]["rho"]) == 3
