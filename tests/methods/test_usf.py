"""USF: the feedback a step uses is sign(W) at BioTorch's uniform Xavier scale."""

from __future__ import annotations

import math
from functools import partial

import torch

from faeval.backbones import ResMLP, SmallCNN
from faeval.methods import USF
from tests.helpers import feedback_used, sgd


def xavier_std(weight: torch.Tensor) -> float:
    """√(2 / (fan_in + fan_out)), fans counted by hand: (out, in[, k, k])."""
    receptive = weight[0, 0].numel()
    return math.sqrt(2 / ((weight.shape[0] + weight.shape[1]) * receptive))


def test_feedback_has_the_weights_signs_at_one_uniform_magnitude(monkeypatch, tmp_path):
    torch.manual_seed(0)
    method = USF((12,), 4, optimizer=sgd(0.5), backbone=partial(ResMLP, d_hidden=16, num_blocks=2))
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    steps = feedback_used(monkeypatch, tmp_path, method, x, y, steps=3)
    assert [len(s) for s in steps] == [6, 6, 6]  # embed, 2 × (w1, w2), head
    for calls in steps:
        for _, w, b in calls:
            assert torch.equal(torch.sign(b), torch.sign(w))
            assert torch.allclose(b.abs(), torch.full_like(b, xavier_std(w)))
    assert not torch.equal(steps[0][1][1], steps[2][1][1])  # W trained: B followed it


def test_convolutions_get_the_same_rule(monkeypatch, tmp_path):
    torch.manual_seed(0)
    method = USF((3, 8, 8), 4, backbone=partial(SmallCNN, width=4, num_blocks=1))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    (calls,) = feedback_used(monkeypatch, tmp_path, method, x, y, steps=1)
    assert [w.dim() for _, w, _ in calls] == [4, 4, 2]  # stem conv, block conv, head
    for _, w, b in calls:
        assert torch.equal(torch.sign(b), torch.sign(w))
        assert torch.allclose(b.abs(), torch.full_like(b, xavier_std(w)))
