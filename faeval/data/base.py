"""In-memory data: one tensor per split, batches by index slicing, normalisation on the device."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from typing_extensions import override

from faeval.errors import ConfigError
from faeval.hparams import CLASS_PATH, plain_hparams
from faeval.seeding import resolve_seed

#: Samples in the diagnostics' fixed probe batch (docs/protocol.md).
PROBE_SIZE = 1024


class TensorBatches:
    """Batches of an in-memory (x, y) pair by index slicing: no per-sample Python work.

    The shuffle permutation (and the random targets, when asked) of epoch k come from a
    generator seeded with ``seed + k``, which draws the random targets first, then the
    permutation; so a run resumed at epoch k sees the same batches.

    Given K seeds (a stack's), a batch holds K·B rows, seed-major: row block k is exactly the
    batch that seed k's lone ``TensorBatches`` gives, its own order and its own random labels.
    The orders (and labels) are drawn on the host once per epoch and moved to ``x``'s device
    in one transfer, so with the data on the device every batch is a gather there. A stack
    runs in one process: K > 1 seeds are refused under DDP (``world_size`` > 1) and unshuffled.

    Under DDP every rank holds one of these (Lightning's DistributedSampler only reaches
    DataLoaders, so this shards itself): the epoch's order is cut into global batches of
    ``world_size · batch_size`` samples, and rank r takes the r-th contiguous chunk of each
    (``torch.tensor_split``'s chunks). N ranks with batch B therefore see, step by step, the
    same samples as one process with batch N·B. The last global batch, when short, is split
    as evenly as the chunks allow; in training, where every rank must take every step, a last
    global batch with fewer samples than ranks is dropped.

    Stateful in Lightning's sense (``state_dict``/``load_state_dict``, saved in every
    checkpoint under the fit loop's ``combined_loader``): the state is the epoch in progress
    and how many of its batches the trainer has finished, so a run resumed from a mid-epoch
    checkpoint continues with the next batch instead of replaying the epoch. The state is the
    same for any number of seeds, so a stack's resumes each of its seeds' lone runs.

    Args:
        x: inputs, first dimension the sample.
        y: integer labels.
        batch_size: samples per batch (per rank, per seed); the last batch may be smaller.
        shuffle: permute the samples every epoch.
        seed: base seed of the per-epoch generator, or a stack's K seeds (one each).
        epoch: returns the current epoch when iteration starts.
        random_targets: number of classes to draw i.i.d. labels from for every sample of
            every epoch (the task-free control), or 0 for the true labels.
        rank: this process's rank among ``world_size`` (DDP), 0 alone.
        world_size: the number of ranks sharing every global batch.
        training: every rank must take the same number of batches (see above).
        progress: returns how many batches of the current epoch the trainer has finished
            (saved as the position); default: the batches handed out so far.

    Raises:
        ValueError: ``rank`` outside ``[0, world_size)``, or K > 1 seeds unshuffled or under
            DDP.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int | Sequence[int] = 0,
        epoch: Callable[[], int] = lambda: 0,
        random_targets: int = 0,
        rank: int = 0,
        world_size: int = 1,
        training: bool = False,
        progress: Callable[[], int] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        self.seeds = list(seed) if isinstance(seed, Sequence) else [seed]
        if len(self.seeds) > 1 and (world_size > 1 or not shuffle):
            raise ValueError(
                f"{len(self.seeds)} seeds' batches are shuffled in one process (a stack runs "
                f"neither in order nor under DDP); got shuffle={shuffle}, world_size={world_size}"
            )
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.epoch = epoch
        self.random_targets = random_targets
        self.rank, self.world_size = rank, world_size
        self.training = training
        self.progress = progress
        self._handed_out = 0
        self._epoch_in_progress: int | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, position) from a checkpoint

    def state_dict(self) -> dict[str, int | None]:
        """The epoch in progress and how many of its batches the trainer has finished."""
        position = self.progress() if self.progress is not None else self._handed_out
        return {"epoch": self._epoch_in_progress, "position": position}

    def load_state_dict(self, state: dict[str, int | None]) -> None:
        """Continue the saved epoch at the saved position (a later epoch starts afresh)."""
        if state.get("epoch") is not None:
            self._resume = (state["epoch"], state["position"])

    def _global_batches(self) -> int:
        n, per_step = len(self.x), self.batch_size * self.world_size
        count = -(-n // per_step)
        if self.training and count and n - (count - 1) * per_step < self.world_size:
            count -= 1  # too short to give every rank a sample: every rank must step together
        return count

    def _chunk(self, i: int) -> tuple[int, int]:
        """This rank's [start, stop) within the order, for global batch i."""
        lo = i * self.batch_size * self.world_size
        size = min(len(self.x), lo + self.batch_size * self.world_size) - lo
        base, extra = divmod(size, self.world_size)  # torch.tensor_split's chunk sizes
        start = lo + self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def __len__(self) -> int:
        count = self._global_batches()
        if count and self.world_size > 1:
            start, stop = self._chunk(count - 1)
            count -= start == stop  # an evaluation rank left without a sample in the last
        return count

    def plan(self, epoch: int) -> tuple[Tensor | None, Tensor | None]:
        """The epoch's orders (K, N) and random labels (K, N) on ``x``'s device.

        None: in order, the true labels. Seed k's generator (``seeds[k] + epoch``) draws its
        random targets, then its permutation.
        """
        n, orders, labels = len(self.x), [], []
        for seed in self.seeds:
            gen = torch.Generator().manual_seed(seed + epoch)
            if self.random_targets:
                labels.append(
                    torch.randint(self.random_targets, (n,), generator=gen, dtype=self.y.dtype)
                )
            if self.shuffle:
                orders.append(torch.randperm(n, generator=gen))
        return tuple(torch.stack(t).to(self.x.device) if t else None for t in (orders, labels))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch()
        orders, labels = self.plan(epoch)  # one transfer per epoch
        first = 0
        if self._resume is not None:
            saved_epoch, position = self._resume
            self._resume = None
            first = position if saved_epoch == epoch else 0
        self._epoch_in_progress, self._handed_out = epoch, first
        for i in range(first, self._global_batches()):
            start, stop = self._chunk(i)
            if start == stop:
                continue
            self._handed_out = i + 1
            if orders is None:  # in order, one seed: views
                yield self.x[start:stop], (self.y if labels is None else labels[0])[start:stop]
                continue
            idx = orders[:, start:stop]  # (K, b): each seed's samples
            rows = idx.reshape(-1)  # seed-major
            y = self.y.index_select(0, rows) if labels is None else labels.gather(1, idx)
            yield self.x.index_select(0, rows), y.reshape(-1)


class InMemoryDataModule(LightningDataModule, abc.ABC):
    """Base of every faeval data set: the whole set lives in memory as tensors.

    Subclasses set ``input_shape`` and ``num_classes`` (known before loading, so the CLI can
    build the model from them) and implement ``load``; they list their own arguments and
    forward the rest (``**kwargs``) here. Inputs may be stored as uint8: they are
    turned into normalised floats per batch, after the batch reaches the device.

    The test split doubles as the evaluation set reported as test accuracy; the probe set of
    the diagnostics is its first ``probe_size`` samples (held out from training).

    Args:
        batch_size: training batch size.
        eval_batch_size: batch size of the test pass.
        probe_size: samples in the fixed diagnostic probe batch.
        random_targets: replace training labels by i.i.d. uniform labels redrawn every
            epoch for every sample (test labels stay true).
        seed: seed of the shuffling and random targets; default: the run's seed.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...] | None = None  # per-channel statistics for uint8 inputs
    std: tuple[float, ...] | None = None

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        probe_size: int = PROBE_SIZE,
        random_targets: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("probe_size", probe_size),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value}")
        # Recorded in checkpoints (as plain data), so `faeval audit` can rebuild the data of a
        # run trained from Python, which leaves no config.yaml.
        self.save_hyperparameters()
        if CLASS_PATH not in self.hparams:
            self.save_hyperparameters(plain_hparams(type(self), self.hparams))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.probe_size = probe_size
        self.random_targets = random_targets
        self.seed = resolve_seed(seed)
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._affine_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    @abc.abstractmethod
    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The splits ``{"train": (x, y), "test": (x, y)}``; x uint8 or float, y int64."""
        raise NotImplementedError

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load()
        x_test = splits["test"][0]
        if tuple(x_test.shape[1:]) != tuple(self.input_shape):
            raise ConfigError(
                f"{type(self).__name__} loaded samples of shape {tuple(x_test.shape[1:])}, "
                f"expected {tuple(self.input_shape)}"
            )
        if self.probe_size > len(x_test):
            raise ConfigError(
                f"probe_size={self.probe_size} exceeds the {len(x_test)} test samples of "
                f"{type(self).__name__}; pass a smaller --data.probe_size"
            )
        self.splits = splits

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _batches_finished(self) -> int:
        """Training batches of the current epoch whose step has finished (Lightning's count,
        the one its loops resume from)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _shard(self) -> dict[str, int]:
        """This process's rank and the world size: each rank iterates its own shard (DDP)."""
        if self.trainer is None:
            return {"rank": 0, "world_size": 1}
        return {"rank": self.trainer.global_rank, "world_size": self.trainer.world_size}

    @override
    def train_dataloader(self) -> TensorBatches:
        x, y = self.splits["train"]
        return TensorBatches(
            x,
            y,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            epoch=self._epoch,
            random_targets=self.num_classes if self.random_targets else 0,
            training=True,
            progress=self._batches_finished if self.trainer is not None else None,
            **self._shard(),
        )

    @override
    def val_dataloader(self) -> TensorBatches:
        x, y = self.splits["test"]
        return TensorBatches(x, y, self.eval_batch_size, **self._shard())

    @override
    def test_dataloader(self) -> TensorBatches:
        return self.val_dataloader()

    def normalize(self, x: Tensor) -> Tensor:
        """Floats for the network: uint8 inputs scaled to [0, 1] and standardised per channel.

        One fused pass, x·scale + shift, with scale = 1/(255·std) and shift = −mean/std
        kept on the batch's device.
        """
        if x.is_floating_point():
            return x
        scale, shift = self._affine(x.device, x.dim())
        return torch.addcmul(shift, x.float(), scale)

    def _affine(self, device: torch.device, ndim: int) -> tuple[Tensor, Tensor]:
        key = (device, ndim)
        if key not in self._affine_cache:
            mean = torch.tensor(self.mean or (0.0,))
            std = torch.tensor(self.std or (1.0,))
            shape = (1, -1) + (1,) * (ndim - 2)  # per channel: (1, C, 1, 1) for images
            self._affine_cache[key] = (
                (1 / (255 * std)).view(shape).to(device),
                (-mean / std).view(shape).to(device),
            )
        return self._affine_cache[key]

    @override
    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int):
        x, y = batch
        return self.normalize(x), y

    def probe(self, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """The fixed probe batch: the first ``probe_size`` test samples, normalised."""
        self.setup()
        x, y = self.splits["test"]
        return self.normalize(x[: self.probe_size].to(device)), y[: self.probe_size].to(device)
