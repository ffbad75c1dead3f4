"""Wrapped: a researcher's own residual model in the layered interface.

The reference gradients come from the plain model's own ``forward``, never from the
wrapper: forward pre-hooks catch the tensors that enter each block and the readout (the
hidden states h_0..h_L of that forward), and autograd differentiates the loss in them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from faeval.backbones import Wrapped
from faeval.methods import BP, DFA
from tests.helpers import PlainResNet


def states_of_plain_forward(net: PlainResNet, x: torch.Tensor) -> tuple[list, torch.Tensor]:
    """h_0..h_L as they enter each block and the final norm in ``net.forward(x)``."""
    seen = []
    hooks = [m.register_forward_pre_hook(lambda _, a: seen.append(a[0])) for m in net.layers]
    hooks.append(net.norm.register_forward_pre_hook(lambda _, a: seen.append(a[0])))
    try:
        logits = net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, logits


def wrap(net: PlainResNet) -> Wrapped:
    return Wrapped(
        net.stem, net.layers, [net.norm, net.head], (12,), residual_add=not net.skip_inside
    )


@pytest.mark.parametrize("skip_inside", [False, True], ids=["branches", "skip-inside"])
def test_bp_credits_equal_the_plain_models_autograd_gradients_at_every_layer(skip_inside):
    torch.manual_seed(0)
    net = PlainResNet(skip_inside=skip_inside).double()
    method = BP(backbone=wrap(net))
    x, y = torch.randn(24, 12, dtype=torch.float64), torch.randint(0, 4, (24,))
    states, logits = states_of_plain_forward(net, x)
    assert len(states) == net_depth(net) + 1
    # Σ_i ℓ_i: each row is that sample's own gradient, the scale of the credits.
    grads = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), states)
    trace = method.backbone.trace(x)
    torch.testing.assert_close(trace.logits, logits, rtol=0, atol=0)  # the same network
    credits = method.credits(trace.detached(), y)
    assert len(credits) == len(grads)
    for layer, (a, g) in enumerate(zip(credits, grads, strict=True)):
        torch.testing.assert_close(a, g, rtol=1e-10, atol=1e-14, msg=f"layer {layer}")


def net_depth(net: PlainResNet) -> int:
    return len(net.layers)


def test_the_wrapper_trains_the_users_model_in_place_and_reads_the_class_count():
    net = PlainResNet(num_classes=5)
    backbone = wrap(net)
    assert backbone.num_classes == 5 and backbone.num_blocks == 3
    assert backbone.state_shapes() == [(16,)] * 4
    method = DFA(backbone=backbone)
    assert method.backbone.embed is net.stem and method.backbone.blocks[1] is net.layers[1]
    names = {n.split(".")[1] for n, _ in method.named_parameters() if n.startswith("backbone.")}
    assert names == {"embed", "blocks", "head"}
    assert {n for n, _ in method.named_buffers()} >= {"feedback.B0", "feedback.B3"}


def test_the_wrapper_refuses_what_it_cannot_wrap():
    net = PlainResNet()
    with pytest.raises(ValueError, match=r"readout gives 4 logits .* but num_classes=10"):
        Wrapped(net.stem, net.layers, [net.norm, net.head], (12,), num_classes=10)
    with pytest.raises(ValueError, match=r"fails on an input of shape \(1, \*\(7,\)\)"):
        Wrapped(net.stem, net.layers, [net.norm, net.head], (7,))
    with pytest.raises(ValueError, match="at least one block"):
        Wrapped(net.stem, [], net.head, (12,))
    with pytest.raises(ValueError, match="not modules: block 0"):
        Wrapped(net.stem, [torch.tanh], net.head, (12,))
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\) for one sample"):
        Wrapped(net.stem, net.layers, nn.Unflatten(1, (4, 4)), (12,))


def test_a_method_checks_a_built_network_against_the_data_it_is_given():
    backbone = wrap(PlainResNet())
    assert DFA((12,), 4, backbone=backbone).backbone is backbone
    with pytest.raises(ValueError, match=r"built for inputs \(12,\) with 4 classes.*\(8,\)"):
        DFA((8,), 4, backbone=backbone)
    with pytest.raises(ValueError, match="needs input_shape and num_classes"):
        DFA()
