"""MLP: the plain perceptron of the feedback-alignment papers, and DRTP's update on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from faeval.backbones import MLP
from faeval.errors import ConfigError
from faeval.methods import DRTP


def test_states_are_the_layers_outputs_after_the_activation():
    torch.manual_seed(0)
    net = MLP((2, 3), 4, width=5, num_blocks=2).double()
    x = torch.randn(7, 2, 3, dtype=torch.float64)
    trace = net.trace(x)
    linears = [net.embed[1], net.blocks[0][0], net.blocks[1][0]]
    h = x.flatten(1)
    for layer, linear in enumerate(linears):  # h_l = tanh(W_l h_{l-1} + b_l), by hand
        h = torch.tanh(h @ linear.weight.T + linear.bias)
        torch.testing.assert_close(trace.states[layer], h, rtol=0, atol=1e-15)
    torch.testing.assert_close(trace.logits, h @ net.head.weight.T + net.head.bias)
    assert net.residual_add is False and net.num_blocks == 2


@pytest.mark.parametrize(("name", "phi"), [("sigmoid", torch.sigmoid), ("relu", torch.relu)])
def test_the_activation_is_the_one_named(name, phi):
    net = MLP((3,), 2, width=4, num_blocks=1, activation=name)
    x = torch.randn(5, 3)
    expected = phi(x @ net.embed[1].weight.T + net.embed[1].bias)
    torch.testing.assert_close(net.trace(x).states[0], expected)


def test_drtp_on_the_mlp_is_the_papers_update():
    """Frenkel et al. (2021), eq. 3: δ_l = (B_lᵀ y*) ⊙ f′(z_l), ΔW_l ∝ −δ_l h_{l-1}ᵀ, up to the
    sign of B (faeval's credit is −onehot·B: the same method in law, DRTP's docstring), and
    the output layer's gradient is the cross-entropy's own."""
    torch.manual_seed(0)
    method = DRTP((6,), 3, backbone=lambda s, c: MLP(s, c, width=8, num_blocks=2)).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    objective, _ = method.step_objective(x, y)
    objective.backward()
    net = method.backbone
    target = F.one_hot(y, 3).double()
    h_prev = x
    for layer, linear in enumerate([net.embed[1], net.blocks[0][0], net.blocks[1][0]]):
        h = torch.tanh(h_prev @ linear.weight.T + linear.bias)
        delta = (-target @ method.feedback[layer].double()) * (1 - h**2)  # a_l ⊙ tanh′(z_l)
        torch.testing.assert_close(
            linear.weight.grad, delta.T @ h_prev / len(x), rtol=1e-12, atol=0
        )
        torch.testing.assert_close(linear.bias.grad, delta.mean(0), rtol=1e-12, atol=0)
        h_prev = h
    e = torch.softmax(h_prev @ net.head.weight.T + net.head.bias, 1) - target  # ∂ℓ/∂logits
    torch.testing.assert_close(net.head.weight.grad, e.T @ h_prev / len(x), rtol=1e-12, atol=0)


def test_a_width_or_depth_below_one_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="width=0"):
        MLP((3,), 2, width=0)
    with pytest.raises(ConfigError, match="num_blocks=0"):
        MLP((3,), 2, num_blocks=0)
