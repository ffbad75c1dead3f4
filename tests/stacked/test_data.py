"""A stack's batches: seed k's rows are exactly the batches of seed k's lone run, resumed too."""

from __future__ import annotations

import pytest
import torch

from faeval.data import SyntheticLadder, TensorBatches
from faeval.stacked.convert import NotStackable
from faeval.stacked.data import StackedData


def ladder(seed: int, **kwargs) -> SyntheticLadder:
    args = dict(input_dim=8, num_classes=3, n_train=100, n_test=40, batch_size=32, probe_size=8)
    return SyntheticLadder(**{**args, **kwargs}, seed=seed)


@pytest.mark.parametrize("random_targets", [False, True])
def test_each_seeds_rows_are_its_lone_runs_batches_epoch_by_epoch(random_targets):
    seeds = [0, 5, 9]
    modules = [ladder(s, random_targets=random_targets) for s in seeds]
    data = StackedData(modules)
    data.setup()
    assert all(m.splits is modules[0].splits for m in modules)  # one copy of the data set
    for epoch in (0, 3):
        batches = TensorBatches(
            *modules[0].splits["train"],
            32,
            shuffle=True,
            seed=seeds,
            epoch=lambda e=epoch: e,
            random_targets=3 if random_targets else 0,
        )
        lone = []
        for m in modules:
            m.trainer = None
            loader = m.train_dataloader()
            loader.epoch = lambda e=epoch: e
            lone.append(list(loader))
        stacked = list(batches)
        assert len(stacked) == len(batches) == 4  # the last one holds 4 samples per seed
        for i, (x, y) in enumerate(stacked):
            for k in range(len(seeds)):
                xk, yk = lone[k][i]
                assert torch.equal(x.chunk(len(seeds))[k], xk)
                assert torch.equal(y.chunk(len(seeds))[k], yk)


@pytest.mark.parametrize("random_targets", [0, 3])
def test_a_stack_and_its_seeds_lone_runs_resume_each_others_mid_epoch_state(random_targets):
    x, y = torch.randn(100, 8), torch.arange(100) % 3
    seeds = [0, 5, 9]

    def batches(seed):
        return TensorBatches(x, y, 32, shuffle=True, seed=seed, epoch=lambda: 2,
                             random_targets=random_targets)  # fmt: skip

    stack = batches(seeds)
    whole = list(stack)  # 32, 32, 32, 4 samples per seed
    assert [len(b[0]) for b in whole] == [96, 96, 96, 12]
    stack = batches(seeds)
    handed_out = iter(stack)
    next(handed_out), next(handed_out)
    state = stack.state_dict()
    assert state == {"epoch": 2, "position": 2}  # a lone run's form
    resumed = batches(seeds)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == 2
    for k, seed in enumerate(seeds):
        lone = batches(seed)
        lone_whole = list(lone)
        lone.load_state_dict(state)  # the stack's state resumes each seed alone
        for (xs, ys), (xb, yb), (xw, yw) in zip(rest, lone, lone_whole[2:], strict=True):
            assert torch.equal(xs.chunk(3)[k], xb) and torch.equal(ys.chunk(3)[k], yb)
            assert torch.equal(xb, xw) and torch.equal(yb, yw)
    for (xa, ya), (xb, yb) in zip(rest, whole[2:], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    lone = batches(seeds[1])
    next(iter(lone))
    again = batches(seeds)
    again.load_state_dict(lone.state_dict())  # and a lone run's state resumes the stack
    for (xa, ya), (xb, yb) in zip(again, whole[1:], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_stack_refuses_ddp_and_unshuffled_batches():
    x, y = torch.randn(10, 2), torch.arange(10)
    with pytest.raises(ValueError, match="got shuffle=True, world_size=2"):
        TensorBatches(x, y, 4, shuffle=True, seed=[0, 1], world_size=2)
    with pytest.raises(ValueError, match="got shuffle=False, world_size=1"):
        TensorBatches(x, y, 4, seed=[0, 1])


def test_data_that_differ_in_more_than_the_seed_are_refused():
    with pytest.raises(NotStackable, match="differ in more than their seed"):
        StackedData([ladder(0), ladder(1, batch_size=16)])
