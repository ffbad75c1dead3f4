"""SmallCNN: feature-map states, BatchNorm in eval mode during diagnostics."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from faeval.backbones import SmallCNN
from faeval.diagnostics import measure_layers
from faeval.methods import DFA


def test_default_states_halve_and_stay_within_fa_reach():
    cnn = SmallCNN((3, 32, 32), 10)
    shapes = cnn.state_shapes()
    assert shapes == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2), (256, 1, 1)]
    assert max(math.prod(s) for s in shapes) <= 4096
    assert not cnn.residual_add and not hasattr(cnn, "out_ln")  # shapes differ: no add
    same = SmallCNN((3, 32, 32), 10, downsample=False)
    assert same.state_shapes() == [(16, 16, 16)] * 5 and same.residual_add
    assert not SmallCNN((3, 32, 32), 10, downsample=False, residual_add=False).residual_add


def test_block_is_conv_batchnorm_relu():
    cnn = SmallCNN((3, 8, 8), 2, width=2, num_blocks=1, downsample=False).eval()
    conv, bn = cnn.blocks[0][0], cnn.blocks[0][1]
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    h = torch.randn(3, 2, 4, 4)
    z = nn.functional.conv2d(h, conv.weight, padding=1)
    z = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        bn.running_var.view(1, -1, 1, 1) + bn.eps
    )
    expected = torch.relu(z * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    torch.testing.assert_close(cnn.blocks[0](h), expected)


def test_odd_sides_round_up_so_fashion_mnist_fits_the_defaults():
    cnn = SmallCNN((1, 28, 28), 10)
    assert [s[1:] for s in cnn.state_shapes()] == [(14, 14), (7, 7), (4, 4), (2, 2), (1, 1)]
    assert [s[1:] for s in SmallCNN((3, 32, 32), 10).state_shapes()][-1] == (1, 1)
    with pytest.raises(ValueError, match=r"image inputs.*--model.backbone ResMLP"):
        SmallCNN((64,), 10)


def test_diagnostics_use_running_statistics_per_sample_and_leave_them_alone():
    method = DFA((3, 16, 16), 4, backbone=partial(SmallCNN, width=4, num_blocks=2))
    x, y = torch.randn(16, 3, 16, 16), torch.randint(4, (16,))
    with torch.no_grad():  # move the running statistics away from their initial values
        for _ in range(3):
            method.backbone(torch.randn(16, 3, 16, 16) * 2 + 1)
    stats = {n: b.clone() for n, b in method.backbone.named_buffers()}

    whole = measure_layers(method, x, y)
    halves = [measure_layers(method, x[:8], y[:8]), measure_layers(method, x[8:], y[8:])]

    assert method.training  # the mode is restored
    for n, b in method.backbone.named_buffers():
        assert torch.equal(b, stats[n]), f"diagnostics updated {n}"
    # Eval mode: each sample's state does not depend on the rest of the batch, so the mean
    # over the batch is the mean of the halves' means (batch statistics would break this).
    for layer, h in enumerate(whole.h_norm):
        assert h == pytest.approx((halves[0].h_norm[layer] + halves[1].h_norm[layer]) / 2, rel=1e-6)
    with torch.no_grad():
        method.backbone.eval()
        running = method.backbone.trace(x).states[1]
        method.backbone.train()
        batch_stats = method.backbone.trace(x).states[1]
    assert not torch.allclose(batch_stats, running)  # the check above can tell them apart
    expected = running.flatten(1).norm(dim=1).mean().item()
    assert whole.h_norm[1] == pytest.approx(expected, rel=1e-6)
