"""StateBridge: exact top credit, BP's gradients on a linear system, bridge training, one step."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from faeval.backbones import LayeredBackbone, ResMLP
from faeval.methods import StateBridge
from tests.helpers import EpochMetric, LinearNet, quiet_trainer


def autograd_credits(backbone: LayeredBackbone, x: Tensor, y: Tensor) -> list[Tensor]:
    """∂(Σ_i ℓ_i)/∂h_l, by a forward written out here."""
    h = backbone.embed(x).detach().requires_grad_(True)
    states = [h]
    for block in backbone.blocks:
        h = backbone.combine(h, block(h))
        states.append(h)
    loss = F.cross_entropy(backbone.readout(h), y, reduction="sum")
    return list(torch.autograd.grad(loss, states))


def mean_cos(a: Tensor, g: Tensor) -> float:
    return F.cosine_similarity(a.flatten(1), g.flatten(1), dim=1).mean().item()


def test_top_credit_is_exact_through_terminal_ln():
    torch.manual_seed(0)
    backbone = functools.partial(ResMLP, d_hidden=16, num_blocks=2)
    method = StateBridge((8,), 3, backbone=backbone, bridge_width=16)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    credits = method.credits(method.backbone.trace(x).detached(), y)
    torch.testing.assert_close(credits[-1], autograd_credits(method.backbone, x, y)[-1])


def test_linear_bridges_fitted_to_convergence_give_backprop_gradients():
    torch.manual_seed(0)
    method = StateBridge(
        (8,),
        3,
        backbone=functools.partial(LinearNet, d=6),
        bridge_depth=1,
        bridge_skip=False,
    )
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    trace = method.backbone.trace(x).detached()
    before = [
        mean_cos(a, g)
        for a, g in zip(
            method.credits(trace, y), autograd_credits(method.backbone, x, y), strict=True
        )
    ]
    opt = torch.optim.LBFGS(
        method.bridges.parameters(), max_iter=200, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = method.auxiliary_loss(trace, y)
        loss.backward()
        return loss

    opt.step(closure)
    assert method.auxiliary_loss(trace, y).item() / len(method.bridges) < 1e-8
    assert all(p.grad is None for p in method.backbone.parameters())
    after = [
        mean_cos(a, g)
        for a, g in zip(
            method.credits(trace, y), autograd_credits(method.backbone, x, y), strict=True
        )
    ]
    assert min(after) > 0.95, (before, after)
    assert min(before[:-1]) < 0.9, before  # random linear bridges do not match by chance


def test_bridge_loss_falls_and_one_step_trains_backbone_and_bridges(tiny_ladder, tmp_path):
    torch.manual_seed(0)
    backbone = functools.partial(ResMLP, d_hidden=16, num_blocks=2)
    method = StateBridge(
        tiny_ladder.input_shape,
        tiny_ladder.num_classes,
        backbone=backbone,
        bridge_width=16,
        bridge_lr=3e-3,
    )
    assert [g.get("lr") for g in method.parameter_groups()] == [None, 3e-3]
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    quiet_trainer(tmp_path, max_steps=1).fit(method, datamodule=tiny_ladder)
    changed = {
        n.split(".")[0] + "." + n.split(".")[1]
        for n, p in method.named_parameters()
        if not torch.equal(p, before[n])
    }
    assert {
        "backbone.embed",
        "backbone.blocks",
        "backbone.head",
        "bridges.0",
        "bridges.1",
    } <= changed, changed
    record = EpochMetric("train/bridge_loss")
    quiet_trainer(tmp_path, max_epochs=4, callbacks=[record]).fit(method, datamodule=tiny_ladder)
    assert all(torch.isfinite(torch.tensor(record.values)))
    assert record.values[-1] < record.values[0] / 2, record.values
