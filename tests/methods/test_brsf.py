"""BRSF: sign(W) with random magnitudes redrawn for every batch, reproducibly."""

from __future__ import annotations

import math
from functools import partial

import torch

from faeval.backbones import ResMLP
from faeval.methods import BRSF
from tests.helpers import feedback_used, sgd

BACKBONE = partial(ResMLP, d_hidden=32, num_blocks=2)


def test_feedback_has_the_weights_signs_and_magnitudes_redrawn_every_batch(monkeypatch, tmp_path):
    torch.manual_seed(0)
    method = BRSF((12,), 4, optimizer=sgd(0.5), backbone=BACKBONE)
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    steps = feedback_used(monkeypatch, tmp_path, method, x, y, steps=3)
    for calls in steps:
        for _, w, b in calls:
            assert torch.equal(torch.sign(b), torch.sign(w))
            bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))  # |M|, M Xavier uniform
            assert b.abs().max() <= bound
            # |U(−a, a)| is U(0, a): mean a/2, E[m²] = a²/3 (BioTorch's draw, loosely)
            assert abs(b.abs().mean().item() / bound - 0.5) < 0.2
    for before, after in zip(steps[0], steps[1], strict=True):
        assert not torch.equal(before[2].abs(), after[2].abs())  # redrawn after the update


def test_a_steps_draw_depends_on_the_seed_and_the_step_alone():
    a, b = (BRSF((12,), 4, backbone=BACKBONE, feedback_seed=5) for _ in range(2))
    c = BRSF((12,), 4, backbone=BACKBONE, feedback_seed=6)
    a.updates = b.updates = c.updates = 7
    assert all(torch.equal(p, q) for p, q in zip(a.magnitudes(), b.magnitudes(), strict=True))
    assert not torch.equal(a.magnitudes()[1], c.magnitudes()[1])
    b.updates = 8
    assert not torch.equal(a.magnitudes()[1], b.magnitudes()[1])
    state = a.state_dict()
    assert state["_extra_state"] == {"feedback_seed": 5, "updates": 7}
    c.load_state_dict(state)  # the seed and the count are checkpointed state
    assert all(
        torch.equal(p, q) for p, q in zip(c.feedback_weights(), a.feedback_weights(), strict=True)
    )
