"""What faeval needs of data: faeval's own data modules, or any LightningDataModule.

To build a method: the per-sample input shape and the class count. A data module gives
them as ``input_shape`` and ``num_classes`` attributes; without ``input_shape`` the shape
is read off one batch of its validation data, and without ``num_classes`` the count is
read off its validation data set's ``classes`` (as torchvision's data sets have).

To measure: the fixed probe batch of the diagnostics. It is the data module's own
``probe(device)`` where it has one (faeval's data modules do), else the first
``probe_size`` samples (its attribute, default 1024) of its validation data, else of the
trainer's validation loaders, unless a probe is passed explicitly.

Batches are pairs (inputs, labels). They reach the network as they do in training: moved
to the device through the data module's ``transfer_batch_to_device`` and its
``on_before/after_batch_transfer`` hooks (faeval's data modules normalise there).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from faeval.data.base import PROBE_SIZE
from faeval.errors import ConfigError

Batch = tuple[Tensor, Tensor]

log = logging.getLogger("faeval")
_said: set[str] = set()  # the small-probe notes already logged by this process


class DataContractError(ConfigError):
    """The data does not give what faeval needs (shape, class count, probe, batch form)."""


def _name(datamodule: Any) -> str:
    return type(datamodule).__name__


def validation_loader(datamodule: LightningDataModule) -> Iterable:
    """The data module's validation data, after ``setup("validate")``.

    Raises:
        DataContractError: it has no validation data.
    """
    datamodule.setup("validate")
    try:
        return datamodule.val_dataloader()
    except MisconfigurationException:  # Lightning's default: "must be implemented"
        raise DataContractError(
            f"{_name(datamodule)} has no val_dataloader, where faeval takes its probe batch and "
            "test accuracy from; give it one, or pass the probe explicitly"
        ) from None


def split_batch(batch: Any, where: str) -> Batch:
    """``batch`` as (inputs, labels).

    Raises:
        DataContractError: it is not a pair of tensors.
    """
    if (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, Tensor) for t in batch)
    ):
        return batch[0], batch[1]
    raise DataContractError(
        f"faeval reads batches as (inputs, labels) tensor pairs; {where} gave a "
        f"{type(batch).__name__}; return (x, y) from its dataset or collate_fn"
    )


def to_network(
    batch: Any, device: torch.device | str, datamodule: LightningDataModule | None = None
) -> Batch:
    """A batch on ``device``, through the data module's transfer hooks as in training."""
    device = torch.device(device)
    if datamodule is None:
        x, y = split_batch(batch, "the loader")
        return x.to(device), y.to(device)
    batch = datamodule.on_before_batch_transfer(batch, 0)
    batch = datamodule.transfer_batch_to_device(batch, device, 0)
    return split_batch(datamodule.on_after_batch_transfer(batch, 0), _name(datamodule))


def network_batches(datamodule: LightningDataModule, device: torch.device | str) -> Iterator[Batch]:
    """The data module's validation batches, ready for the network on ``device``."""
    for batch in validation_loader(datamodule):
        yield to_network(batch, device, datamodule)


def first_samples(batches: Iterable[Batch], size: int) -> Batch:
    """The first ``size`` samples of ``batches`` (fewer if there are fewer), as one batch.

    Raises:
        DataContractError: there are none.
    """
    xs, ys, count = [], [], 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        count += len(x)
        if count >= size:
            break
    if not xs:
        raise DataContractError("the validation data is empty: no probe batch can be taken from it")
    return torch.cat(xs)[:size], torch.cat(ys)[:size]


def note_small_probe(count: int, wanted: int, source: str, way_out: str) -> None:
    """Says once, in the log, that the probe batch holds fewer samples than asked.

    Args:
        count: samples the probe batch holds.
        wanted: samples it was meant to hold (``probe_size``, default 1024).
        source: the validation data it came from ("Blobs's validation data").
        way_out: how to give it more, or to ask for ``count`` and silence the note.
    """
    if count >= wanted:
        return
    message = (
        f"the probe batch holds {count} samples, not {wanted}: {source} has no more; the "
        f"diagnostics are noisier on fewer ({way_out})"
    )
    if message not in _said:
        _said.add(message)
        log.warning(message)


def probe_batch(datamodule: LightningDataModule, device: torch.device | str = "cpu") -> Batch:
    """The probe batch of a data module: its own ``probe`` or its first validation samples.

    Raises:
        DataContractError: it has neither.
    """
    own = getattr(datamodule, "probe", None)
    if callable(own):
        return own(device)
    size = getattr(datamodule, "probe_size", None) or PROBE_SIZE
    x, y = first_samples(network_batches(datamodule, device), size)
    way_out = f"give it more validation samples, or set its probe_size to {len(x)}"
    note_small_probe(len(x), size, f"{_name(datamodule)}'s validation data", way_out)
    return x, y


def given_probe(batch: Batch, device: torch.device | str) -> Batch:
    """A probe batch passed in, checked and moved to ``device`` (already normalised).

    Raises:
        DataContractError: it is not a pair (inputs, labels).
    """
    x, y = split_batch(batch, "the probe passed in")
    return x.to(device), y.to(device)


def trainer_probe(trainer: Any, device: torch.device | str, given: Batch | None = None) -> Batch:
    """The probe batch of a run: ``given``, else the trainer's data module's, else the first
    samples of the trainer's validation loaders.

    Raises:
        DataContractError: none of them is there.
    """
    if given is not None:
        return given_probe(given, device)
    if trainer.datamodule is not None:
        return probe_batch(trainer.datamodule, device)
    loaders = trainer.val_dataloaders
    if loaders:
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        batches = (to_network(b, device) for b in loader)
        x, y = first_samples(batches, PROBE_SIZE)
        way_out = "give the validation loader more samples, or pass probe=(x, y)"
        note_small_probe(len(x), PROBE_SIZE, "the validation loader", way_out)
        return x, y
    raise DataContractError(
        "faeval's diagnostics need a probe batch: fit with a data module (or val_dataloaders) "
        "that has validation data, or pass probe=(x, y)"
    )


def check_labels(y: Tensor, num_classes: int, source: str) -> None:
    """Refuses labels that are not one class index in 0..C−1 per sample (one device sync).

    Args:
        y: a batch's labels.
        num_classes: C, the class count the network was built for.
        source: whose labels, for the message ("Blobs's training batches").

    Raises:
        DataContractError: labels that are not int64 (or uint8) class indices (float or
            one-hot labels, int32…), or a label outside 0..C−1.
    """
    if y.dtype not in (torch.long, torch.uint8) or y.ndim != 1:  # what cross_entropy takes
        raise DataContractError(
            f"the labels of {source} are {y.dtype} of shape {tuple(y.shape)}; faeval "
            f"trains on one class index per sample: give y as a torch.long tensor of values "
            f"in 0..{num_classes - 1} (e.g. y.long(), or y.argmax(1) for one-hot rows)"
        )
    if not y.numel():
        return
    low, high = torch.aminmax(y)
    if low < 0 or high >= num_classes:
        bad = int(low) if low < 0 else int(high)
        raise DataContractError(
            f"the labels of {source} include {bad}, outside 0..{num_classes - 1} (num_classes="
            f"{num_classes}); set the data module's num_classes to the class count (at least "
            f"{int(high) + 1}) or map the labels into 0..{num_classes - 1}"
        )


def input_shape_of(datamodule: LightningDataModule) -> tuple[int, ...]:
    """The per-sample input shape: ``datamodule.input_shape``, else read off one batch.

    Raises:
        DataContractError: it has neither the attribute nor validation data.
    """
    shape = getattr(datamodule, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    try:
        x, _ = next(network_batches(datamodule, "cpu"))
    except (DataContractError, StopIteration) as err:
        raise DataContractError(
            f"{_name(datamodule)} has no input_shape attribute and faeval cannot read it off "
            f"its validation data ({err or 'empty'}); set self.input_shape in its __init__"
        ) from None
    return tuple(x.shape[1:])


def num_classes_of(datamodule: LightningDataModule) -> int:
    """The class count: ``datamodule.num_classes``, else its validation set's ``classes``.

    Raises:
        DataContractError: it has neither.
    """
    count = getattr(datamodule, "num_classes", None)
    if count is not None:
        return int(count)
    try:
        dataset = getattr(validation_loader(datamodule), "dataset", None)
    except DataContractError:
        dataset = None
    while dataset is not None and not hasattr(dataset, "classes"):
        dataset = getattr(dataset, "dataset", None)  # through Subset and similar wrappers
    if dataset is not None:
        return len(dataset.classes)
    raise DataContractError(
        f"{_name(datamodule)} does not say how many classes it has: set self.num_classes in "
        "its __init__ (faeval builds the network's head from it)"
    )
