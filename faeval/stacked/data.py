"""The data of a stack: one copy of the splits on the device, each seed's own batches.

Seed k's rows of a stacked batch are exactly the batch its lone run would see: the same
per-epoch generator (seeded with the seed's data seed + the epoch) draws its random targets,
then its permutation, as ``TensorBatches`` does. The splits are loaded once and moved once to
the training device; every batch is a gather on that device, so no batch crosses from the host.
Like ``TensorBatches``, the batches are stateful (the epoch in progress and how many of its
batches the trainer has finished, in every checkpoint), so a stack resumed from a mid-epoch
checkpoint continues with the next batch; the state has ``TensorBatches``' form, so each
seed's own checkpoint resumes its lone run at the same place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from typing_extensions import override

from faeval.data import InMemoryDataModule, TensorBatches
from faeval.data.base import BatchPosition
from faeval.stacked.convert import RUN_ALONE, NotStackable


class StackedBatches(BatchPosition):
    """Seed-major batches of K·B rows: row block k is seed k's own batch of its own epoch.

    Args:
        x: the training inputs (on the training device).
        y: the true labels (on the training device).
        seeds: each seed's data seed (its ``InMemoryDataModule.seed``).
        batch_size: B, samples per seed per batch; the last batch may be smaller.
        epoch: returns the current epoch when iteration starts.
        random_targets: number of classes of the i.i.d. labels drawn per seed and epoch, or 0.
        progress: returns how many batches of the epoch the trainer has finished (what a
            checkpoint records; by default the batches handed out).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        seeds: list[int],
        batch_size: int,
        epoch: Callable[[], int] = lambda: 0,
        random_targets: int = 0,
        progress: Callable[[], int] | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.seeds = seeds
        self.batch_size = batch_size
        self.epoch = epoch
        self.random_targets = random_targets
        self.progress = progress
        self._handed_out = 0
        self._epoch_in_progress: int | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, position) from a checkpoint

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def plan(self) -> tuple[Tensor, Tensor | None]:
        """This epoch's orders (K, N) and random labels (K, N) (None: the true labels).

        Drawn on the host from each seed's generator, in ``TensorBatches``' order of draws.
        """
        n, epoch = len(self.x), self.epoch()
        orders, labels = [], []
        for seed in self.seeds:
            gen = torch.Generator().manual_seed(seed + epoch)
            if self.random_targets:
                labels.append(
                    torch.randint(self.random_targets, (n,), generator=gen, dtype=self.y.dtype)
                )
            orders.append(torch.randperm(n, generator=gen))
        return torch.stack(orders), torch.stack(labels) if labels else None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch()
        orders, labels = self.plan()
        orders = orders.to(self.x.device)  # one transfer per epoch
        if labels is not None:
            labels = labels.to(self.x.device)
        first = 0
        if self._resume is not None:
            saved_epoch, position = self._resume
            self._resume = None
            first = position if saved_epoch == epoch else 0
        self._epoch_in_progress, self._handed_out = epoch, first
        for b in range(first, len(self)):
            self._handed_out = b + 1
            i = b * self.batch_size
            idx = orders[:, i : i + self.batch_size]  # (K, b): each seed's samples
            rows = idx.reshape(-1)  # seed-major
            y = self.y.index_select(0, rows) if labels is None else labels.gather(1, idx)
            yield self.x.index_select(0, rows), y.reshape(-1)


class StackedData(LightningDataModule):
    """The training and test data of K seeds' runs of one data configuration.

    Args:
        datamodules: the K seeds' data modules, built from one configuration (they differ in
            ``seed`` only); the first one's splits serve all.

    Raises:
        NotStackable: the data modules are not faeval's in-memory ones, or differ in class,
            batch sizes or targets.
    """

    def __init__(self, datamodules: list[InMemoryDataModule]) -> None:
        super().__init__()
        first = datamodules[0]
        if not isinstance(first, InMemoryDataModule):
            raise NotStackable(
                f"{type(first).__name__} is not one of faeval's in-memory data modules "
                "(faeval.data.InMemoryDataModule), whose splits a stack gathers each seed's "
                f"batches from on the device; {RUN_ALONE}"
            )
        same = ("batch_size", "eval_batch_size", "probe_size", "random_targets")
        for dm in datamodules:
            if type(dm) is not type(first) or any(
                getattr(dm, k) != getattr(first, k) for k in same
            ):
                raise NotStackable("the seeds' data differ in more than their seed")
        self.datamodules = datamodules
        self.input_shape, self.num_classes = first.input_shape, first.num_classes
        self._on_device: dict[str, tuple[Tensor, Tensor]] = {}

    @override
    def setup(self, stage: str | None = None) -> None:
        first, *rest = self.datamodules
        first.setup(stage)
        for dm in rest:  # the data set is the seeds' common ground: one copy
            dm.splits = first.splits

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """A split on the training device, moved there once."""
        if name not in self._on_device:
            device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
            x, y = self.datamodules[0].splits[name]
            self._on_device[name] = (x.to(device), y.to(device))
        return self._on_device[name]

    @override
    def train_dataloader(self) -> StackedBatches:
        first = self.datamodules[0]
        return StackedBatches(
            *self.split("train"),
            [dm.seed for dm in self.datamodules],
            first.batch_size,
            epoch=lambda: self.trainer.current_epoch if self.trainer else 0,
            random_targets=first.num_classes if first.random_targets else 0,
            progress=self._batches_finished if self.trainer is not None else None,
        )

    def _batches_finished(self) -> int:
        """Training batches of the current epoch whose step has finished (Lightning's count,
        the one its loops resume from; as ``InMemoryDataModule``'s)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    @override
    def val_dataloader(self) -> TensorBatches:
        return TensorBatches(*self.split("test"), self.datamodules[0].eval_batch_size)

    @override
    def test_dataloader(self) -> TensorBatches:
        return self.val_dataloader()

    @override
    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int):
        x, y = batch
        return self.datamodules[0].normalize(x), y
