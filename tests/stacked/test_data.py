"""A stack's batches: seed k's rows are exactly the batches of seed k's lone run."""

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


def test_data_that_differ_in_more_than_the_seed_are_refused():
    with pytest.raises(NotStackable, match="differ in more than their seed"):
        StackedData([ladder(0), ladder(1, batch_size=16)])
