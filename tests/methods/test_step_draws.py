"""StepDrawMethod: a run resumed from a Lightning checkpoint draws what an uninterrupted run
draws, so its weights come out identical (ForwardGradient's directions, FF's negatives); with
seeds stacked, each seed draws from its own stream and keeps its own state."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from faeval.backbones import ResMLP
from faeval.data import TensorBatches
from faeval.methods import BRSF, DTP, FF, ForwardGradient
from faeval.seeding import mixed_seed
from faeval.stacked import seed_state, stack_methods
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


def test_stacked_seeds_draw_each_from_its_own_stream_and_keep_their_own_state():
    methods = [build(FF) for _ in range(3)]
    for seed, method in zip((5, 9, 2), methods, strict=True):
        method.draw_seed, method.updates = seed, 3
    stacked = stack_methods(methods)
    assert stacked.seed_draws == [5, 9, 2]
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0, 1, 2, 1, 1, 0])  # 4 rows per seed, seed-major
    want = []
    for k, seed in enumerate((5, 9, 2)):  # FF's documented draw: (seed, 4, t), y + U{1..C−1}
        gen = torch.Generator().manual_seed(mixed_seed(seed, 4, 3))
        want.append((y[4 * k : 4 * k + 4] + torch.randint(1, 3, (4,), generator=gen)) % 3)
    assert torch.equal(stacked.negative_labels(torch.zeros(12, 3), y), torch.cat(want))
    state = stacked.state_dict()
    for k, seed in enumerate((5, 9, 2)):
        lone = build(FF)
        lone.load_state_dict(seed_state(state, k), strict=True)
        assert (lone.draw_seed, lone.updates, lone.seed_draws) == (seed, 3, None)
    methods[1].updates = 4  # a stack steps every seed together
    with pytest.raises(ValueError, match=r"different numbers of steps \(\[3, 4\]\)"):
        stack_methods(methods)


@pytest.mark.parametrize("cls", [BRSF, partial(DTP, feedback_width=4)], ids=["BRSF", "DTP"])
def test_the_methods_drawing_their_feedback_per_step_keep_the_same_state_and_refusal(cls):
    """BRSF and the target-propagation family draw through the same mechanism, their seed kept
    under its option's name, feedback_seed."""
    methods = [build(cls) for _ in range(2)]
    methods[0].updates = methods[1].updates = 3
    methods[1].draw_seed = 7
    stacked = stack_methods(methods)
    assert stacked.get_extra_state() == [
        {"feedback_seed": methods[0].draw_seed, "updates": 3},
        {"feedback_seed": 7, "updates": 3},
    ]
    methods[1].updates = 4
    with pytest.raises(ValueError, match=r"different numbers of steps \(\[3, 4\]\)"):
        stack_methods(methods)
