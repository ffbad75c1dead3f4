"""SyntheticLadder: the seeded teacher, its nonlinearity ladder, its data."""

from __future__ import annotations

import math

import pytest
import torch

from faeval.data import SyntheticLadder
from faeval.ladder import ladder_activation


def ladder(**kwargs) -> SyntheticLadder:
    args = dict(input_dim=8, num_classes=4, width=16, n_train=512, n_test=128, probe_size=64)
    return SyntheticLadder(**{**args, **kwargs})


def test_activation_interpolates_identity_and_tanh():
    z = torch.linspace(-3, 3, 13, dtype=torch.float64)
    torch.testing.assert_close(ladder_activation(z, 0.0), z)
    torch.testing.assert_close(ladder_activation(z, 1.0), torch.tanh(z))
    torch.testing.assert_close(ladder_activation(z, 0.25), 0.75 * z + 0.25 * torch.tanh(z))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_alpha_zero_teacher_is_exactly_linear(depth):
    teacher = ladder(alpha=0.0, depth=depth).teacher
    x, z = torch.randn(2, 32, 8)
    a, b = 1.7, -0.6
    torch.testing.assert_close(
        teacher.scores(a * x + b * z),
        a * teacher.scores(x) + b * teacher.scores(z),
        rtol=1e-5,
        atol=1e-5,
    )


def test_alpha_one_teacher_is_not_linear():
    teacher = ladder(alpha=1.0, depth=4).teacher
    x, z = torch.randn(2, 32, 8)
    gap = teacher.scores(1.7 * x - 0.6 * z) - (1.7 * teacher.scores(x) - 0.6 * teacher.scores(z))
    assert gap.abs().max() > 0.1


def test_the_ladder_climbs_a_linear_fit_explains_alpha_zero_labels_only():
    def linear_fit_accuracy(alpha: float) -> float:
        dm = ladder(alpha=alpha, depth=4, n_train=4000)
        dm.setup()
        x, y = dm.splits["train"]
        w = torch.linalg.lstsq(x, dm.teacher.scores(x)).solution  # best linear score map
        return ((x @ w).argmax(1) == y).float().mean().item()

    assert linear_fit_accuracy(0.0) == 1.0
    assert linear_fit_accuracy(1.0) < 0.95


def test_same_seed_same_teacher_and_data_other_seed_other_teacher():
    a, b, c = ladder(teacher_seed=3), ladder(teacher_seed=3), ladder(teacher_seed=4)
    for wa, wb, wc in zip(a.teacher.weights, b.teacher.weights, c.teacher.weights, strict=True):
        assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.splits["train"][0], b.splits["train"][0])
    assert torch.equal(a.splits["test"][1], b.splits["test"][1])
    assert not torch.equal(a.splits["train"][0], c.splits["train"][0])


def test_inputs_never_replay_a_teachers_weight_stream():
    # Teacher seed s draws W_1 = randn/√d from stream s; the inputs must not be that stream
    # (or stream s + 1, the next teacher's): torch keeps only 32 bits of a seed.
    for seed in (0, 1, 7):
        dm = ladder(teacher_seed=seed)
        dm.setup()
        x = dm.splits["train"][0].flatten()[:64]
        for other in (seed, seed + 1):
            w = ladder(teacher_seed=other).teacher.weights[0].flatten()[:64] * math.sqrt(8)
            assert not torch.allclose(x, w)


def test_inputs_are_standard_gaussian_and_labels_the_teachers_argmax():
    dm = ladder(alpha=0.5, depth=3, n_train=4000)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.shape == (4000, 8) and y.dtype == torch.long
    assert x.mean().abs() < 0.03 and (x.std() - 1).abs() < 0.03
    assert torch.equal(y, dm.teacher.scores(x).argmax(1))
    assert set(y.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"alpha": 1.2}, "alpha must lie in"), ({"depth": 0}, "depth=0"), ({"width": 0}, "width=0")],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ladder(**kwargs)
