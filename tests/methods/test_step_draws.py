"""StepDrawMethod: a run resumed from a Lightning checkpoint draws what an uninterrupted run
draws, so its weights come out identical (ForwardGradient's directions, FF's negatives)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from faeval.backbones import ResMLP
from faeval.data import TensorBatches
from faeval.methods import FF, ForwardGradient
from tests.helpers import quiet_trainer


def build(cls):
    torch.manual_seed(0)
    return cls((5,), 3, backbone=partial(ResMLP, d_hidden=6, num_blocks=2, w2_std=0.5))


@pytest.mark.parametrize("cls", [ForwardGradient, FF], ids=lambda c: c.__name__)
def test_a_resumed_run_draws_what_an_uninterrupted_one_does(tmp_path, cls):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)

    def loader():
        return TensorBatches(x, y, batch_size=8)  # 2 steps an epoch

    straight = build(cls)
    quiet_trainer(tmp_path / "a", max_steps=4).fit(
        straight, train_dataloaders=loader(), val_dataloaders=loader()
    )

    first = build(cls)
    trainer = quiet_trainer(tmp_path / "b", max_steps=3)
    trainer.fit(first, train_dataloaders=loader(), val_dataloaders=loader())  # stops mid-epoch
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = build(cls)
    resumed.draw_seed += 1  # overwritten by the checkpoint
    quiet_trainer(tmp_path / "c", max_steps=4).fit(
        resumed,
        train_dataloaders=loader(),
        val_dataloaders=loader(),
        ckpt_path=tmp_path / "mid.ckpt",
    )
    assert resumed.updates == straight.updates == 4
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name
    # and the draws matter: a run with another draw seed ends elsewhere
    other = build(cls)
    other.draw_seed += 1
    quiet_trainer(tmp_path / "d", max_steps=4).fit(
        other, train_dataloaders=loader(), val_dataloaders=loader()
    )
    assert not torch.equal(
        other.backbone.blocks[1].w2.weight, straight.backbone.blocks[1].w2.weight
    )
