"""Norms and cosines against hand computations, including the pitfalls of docs/protocol.md."""

import math

import torch
import torch.nn.functional as F

from faeval.diagnostics import mean_cosine, mean_norm, sample_cosines, sample_norms


def test_norms_are_per_sample_l2_over_the_flattened_state_then_mean():
    h = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]])  # (B=2, 2, 2)
    assert sample_norms(h).tolist() == [5.0, 2.0]
    assert mean_norm(h) == 3.5
    # The pitfall: tensor.norm(-1) is the norm of order -1 over everything, not this.
    assert not math.isclose(h.norm(-1).item(), mean_norm(h))


def test_cosines_are_per_sample_then_mean():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    g = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    assert sample_cosines(a, g).tolist() == [1.0, 0.0]
    assert mean_cosine(a, g) == 0.5


def test_cosine_at_tiny_gradient_norms_is_exact_where_the_eps_clamp_is_biased():
    torch.manual_seed(0)
    a = torch.randn(64, 256)
    g = (0.6 * a + 0.8 * torch.randn(64, 256)) * 1e-10 / 16  # ‖g‖ ≈ 1e-10
    a64, g64 = a.double(), g.double()
    want = ((a64 * g64).sum(1) / (a64.norm(dim=1) * g64.norm(dim=1))).mean().item()
    assert 0.4 < want < 0.8
    assert math.isclose(mean_cosine(a, g), want, rel_tol=1e-6)
    clamped = F.cosine_similarity(a, g, dim=1).mean().item()
    assert clamped < want / 100  # what the pitfall would have reported


def test_zero_norm_gives_nan_not_a_number_that_looks_valid():
    a = torch.tensor([[1.0, 2.0]])
    assert math.isnan(mean_cosine(a, torch.zeros(1, 2)))
