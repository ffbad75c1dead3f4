"""FRSF: sign(W) with magnitudes drawn once and fixed."""

from __future__ import annotations

import math
from functools import partial

import torch

from faeval.backbones import ResMLP
from faeval.methods import FRSF
from tests.helpers import feedback_used, sgd


def test_feedback_has_the_weights_signs_and_fixed_random_magnitudes(monkeypatch, tmp_path):
    torch.manual_seed(0)
    method = FRSF((12,), 4, optimizer=sgd(0.5), backbone=partial(ResMLP, d_hidden=16, num_blocks=2))
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    steps = feedback_used(monkeypatch, tmp_path, method, x, y, steps=3)
    for calls in steps:
        for k, (_, w, b) in enumerate(calls):
            assert torch.equal(torch.sign(b), torch.sign(w))
            torch.testing.assert_close(b.abs(), method.magnitudes[k])  # the buffers, every step
    for first, last in zip(steps[0], steps[-1], strict=True):
        assert torch.equal(first[2].abs(), last[2].abs())  # magnitudes fixed
    for k, (_, w, _) in enumerate(steps[0]):
        bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))  # Xavier uniform on (out, in)
        m = method.magnitudes[k]
        assert m.max() <= bound and m.min() >= 0 and m.std() > 0


def test_magnitudes_are_seeded_state_in_the_checkpoint():
    backbone = partial(ResMLP, d_hidden=16, num_blocks=2)
    a, b = (FRSF((12,), 4, backbone=backbone, feedback_seed=5) for _ in range(2))
    c = FRSF((12,), 4, backbone=backbone, feedback_seed=6)
    assert torch.equal(a.magnitudes[2], b.magnitudes[2])
    assert not torch.equal(a.magnitudes[2], c.magnitudes[2])
    assert "magnitudes.B2" in a.state_dict()
