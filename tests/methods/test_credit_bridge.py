"""CreditBridge: DFA credits in warmup, value gradients after, value training, exact resume."""

from __future__ import annotations

import functools

import torch

from faeval.backbones import ResMLP
from faeval.methods import DFA, CreditBridge
from tests.helpers import EpochMetric, quiet_trainer

BACKBONE = functools.partial(ResMLP, d_hidden=16, num_blocks=2)


def make_cb(**kwargs) -> CreditBridge:
    torch.manual_seed(0)
    return CreditBridge((8,), 3, backbone=BACKBONE, value_width=16, **kwargs)


def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_warmup_credits_are_dfa_credits():
    method = make_cb(warmup_epochs=2, feedback_seed=7)
    dfa = DFA((8,), 3, backbone=BACKBONE, feedback_seed=7)
    dfa.backbone.load_state_dict(method.backbone.state_dict())
    x, y = batch()
    trace = method.backbone.trace(x).detached()
    for epoch in (0, 1):
        method.epoch.fill_(epoch)
        for a, b in zip(method.credits(trace, y), dfa.credits(trace, y), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_credits_after_warmup_are_value_gradients():
    # Central finite differences of each V_l along random directions, in float64.
    method = make_cb(warmup_epochs=1).double()
    method.epoch.fill_(1)
    x, y = batch(8)
    trace = method.backbone.trace(x.double()).detached()
    credits = method.credits(trace, y)
    gen = torch.Generator().manual_seed(2)
    eps = 1e-5
    for layer, (h, a) in enumerate(zip(trace.states, credits, strict=True)):
        d = torch.randn(h.shape, generator=gen, dtype=h.dtype)
        values = method.values[layer]
        with torch.no_grad():
            fd = (values(h + eps * d) - values(h - eps * d)).squeeze(1) / (2 * eps)  # (B,)
        torch.testing.assert_close((a * d).sum(1), fd, rtol=1e-6, atol=1e-9)


def test_one_step_trains_backbone_and_values_not_feedback(tiny_ladder, tmp_path):
    torch.manual_seed(0)
    method = CreditBridge(
        tiny_ladder.input_shape,
        tiny_ladder.num_classes,
        backbone=BACKBONE,
        value_width=16,
        value_lr=3e-3,
    )
    assert [g.get("lr") for g in method.parameter_groups()] == [None, 3e-3]
    before = {n: t.detach().clone() for n, t in method.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(method, datamodule=tiny_ladder)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    after = method.state_dict()
    changed = {n.rsplit(".", 1)[0] for n in before if not torch.equal(before[n], after[n])}
    for part in (
        "backbone.embed.1",
        "backbone.blocks.0.w2",
        "backbone.head",
        "values.0.0",
        "values.2.2",
    ):
        assert part in changed, changed
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("feedback."))


def test_terminal_residual_falls(tiny_ladder, tmp_path):
    torch.manual_seed(0)
    method = CreditBridge(
        tiny_ladder.input_shape,
        tiny_ladder.num_classes,
        backbone=BACKBONE,
        value_width=16,
        value_lr=1e-2,
        warmup_epochs=1,
    )
    record = EpochMetric("train/value_terminal")
    quiet_trainer(tmp_path, max_epochs=4, callbacks=[record]).fit(method, datamodule=tiny_ladder)
    assert int(method.epoch) == 3
    assert record.values[-1] < record.values[0] / 2, record.values


def test_resumed_run_continues_exactly(tiny_ladder, tmp_path):
    def fresh() -> CreditBridge:
        torch.manual_seed(0)
        return CreditBridge(
            tiny_ladder.input_shape,
            tiny_ladder.num_classes,
            backbone=BACKBONE,
            value_width=16,
            warmup_epochs=1,
        )

    straight = fresh()
    quiet_trainer(tmp_path / "a", max_epochs=2).fit(straight, datamodule=tiny_ladder)
    first = fresh()
    trainer = quiet_trainer(tmp_path / "b", max_epochs=1)
    trainer.fit(first, datamodule=tiny_ladder)
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = fresh()
    quiet_trainer(tmp_path / "c", max_epochs=2).fit(
        resumed,
        datamodule=tiny_ladder,
        ckpt_path=tmp_path / "epoch1.ckpt",
        weights_only=True,  # a method built from Python records its hparams as plain data
    )
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
