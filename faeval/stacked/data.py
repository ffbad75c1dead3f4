"""The data of a stack: one copy of the splits on the device, each seed's own batches.

Seed k's rows of a stacked batch are exactly the batch its lone run would see: the stack's
``TensorBatches`` is given every seed's data seed, and draws seed k's random targets and
permutation from seed k's own per-epoch generator (seeded with its data seed + the epoch), as
seed k's lone run does. The splits are loaded once and moved once to the training device;
every batch is a gather on that device, so no batch crosses from the host. The batches are
stateful (the epoch in progress and how many of its batches the trainer has finished, in
every checkpoint), so a stack resumed from a mid-epoch checkpoint continues with the next
batch; the state has a lone run's form, so each seed's own checkpoint resumes its lone run at
the same place.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from typing_extensions import override

from faeval.data import InMemoryDataModule, TensorBatches
from faeval.stacked.convert import RUN_ALONE, NotStackable


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
    def train_dataloader(self) -> TensorBatches:
        first = self.datamodules[0]
        return TensorBatches(
            *self.split("train"),
            first.batch_size,
            shuffle=True,
            seed=[dm.seed for dm in self.datamodules],
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
