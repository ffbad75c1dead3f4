"""LayerFA: feedback drawn apart from the weights, seeded, checkpointed, redrawn for the null."""

from __future__ import annotations

from functools import partial

import torch

from faeval.backbones import ResMLP
from faeval.diagnostics import matrix_angle, true_gradients
from faeval.methods import FA, LayerFA
from faeval.protocol import null_band

BACKBONE = partial(ResMLP, d_hidden=32, num_blocks=2)


def test_feedback_is_a_fresh_seeded_draw_unrelated_to_the_weights():
    torch.manual_seed(0)  # the run seed: the weights are drawn from the global stream
    method = LayerFA((12,), 4, backbone=BACKBONE)
    for name, w, b in method.feedback_pairs():
        assert 80 < matrix_angle(w, b) < 100, name  # ~90°: independent of W, not W·c
    same = LayerFA((12,), 4, backbone=BACKBONE, feedback_seed=0)
    other = LayerFA((12,), 4, backbone=BACKBONE, feedback_seed=1)
    assert torch.equal(method.feedback[3], same.feedback[3])
    assert not torch.equal(method.feedback[3], other.feedback[3])
    assert {f"feedback.B{k}" for k in range(6)} <= set(method.state_dict())
    assert not any(p is b for p in method.parameters() for b in method.feedback_weights())


def test_null_band_redraws_the_feedback_and_restores_it():
    torch.manual_seed(0)
    method = LayerFA((12,), 4, backbone=BACKBONE)
    trained = [b.clone() for b in method.feedback_weights()]
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    trace, grads = true_gradients(method.backbone, method.backbone.embed(x).detach(), y)
    band = null_band(method, trace, grads, y, draws=4)
    assert band is not None and band.draws == 4
    assert all(torch.equal(a, b) for a, b in zip(trained, method.feedback_weights(), strict=True))
    assert abs(band.deep_mean) < 0.2 and band.deep_std > 0  # fresh random feedback: cos ≈ 0


def test_it_is_not_the_block_level_fa():
    method = LayerFA((12,), 4, backbone=BACKBONE)
    block_level = FA((12,), 4, backbone=BACKBONE)
    assert len(method.feedback) == 6 and len(block_level.feedback) == 3
    assert type(method).local is False and type(block_level).local is True
