"""BP: its credits are the exact gradients; its update is ordinary backprop."""

from functools import partial

import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP
from faeval.diagnostics import sample_cosines, true_gradients
from faeval.methods import BP
from tests.helpers import reference_states


def test_bp_credits_equal_autograd_gradients_at_every_layer():
    torch.manual_seed(0)
    method = BP((12,), 4, backbone=partial(ResMLP, d_hidden=16, num_blocks=3, w2_std=0.3))
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    states, logits = reference_states(method.backbone, x)
    F.cross_entropy(logits, y, reduction="sum").backward()  # per-sample loss scale
    trace = method.backbone.trace(x).detached()
    credits = method.credits(trace, y)
    for a, h in zip(credits, states, strict=True):
        torch.testing.assert_close(a, h.grad, rtol=1e-5, atol=1e-7)
        assert torch.allclose(sample_cosines(a, h.grad), torch.ones(32, dtype=torch.float64))


def test_g_is_the_gradient_of_the_batch_mean_loss():
    """N copies of one sample: each row of g is that sample's gradient divided by N."""
    torch.manual_seed(0)
    backbone = ResMLP((8,), 3, d_hidden=16, num_blocks=2).double()
    x, y = torch.randn(1, 8, dtype=torch.float64), torch.tensor([2])
    states, logits = reference_states(backbone, x)
    F.cross_entropy(logits, y).backward()
    n = 1024
    _, grads = true_gradients(backbone, backbone.embed(x.expand(n, 8)), y.expand(n))
    for g, h in zip(grads, states, strict=True):
        torch.testing.assert_close(g, h.grad.expand(n, -1) / n, rtol=1e-10, atol=0)
