"""CIFAR-10 and CIFAR-100 through torchvision, held in memory as uint8 tensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import download_and_extract_archive
from typing_extensions import override

from faeval.data.base import InMemoryDataModule
from faeval.errors import DataError, DataNotFoundError


def read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """One of torchvision's pickled CIFAR batch files: its (N, 3072) uint8 rows (CHW order)
    and its N labels (``labels``, or CIFAR-100's ``fine_labels``).

    The md5 sums are checked when faeval downloads; an existing file is read as it is.

    Raises:
        DataError: the file is truncated or damaged, or is not a CIFAR batch.
    """
    way_out = "delete it and run again to download it afresh, or copy an intact one there"
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except Exception as err:  # a damaged pickle fails in many ways: EOFError, UnpicklingError…
        reason = ": ".join([type(err).__name__, *str(err).splitlines()[:1]])[:120]
        raise DataError(f"{path} is truncated or damaged ({reason}); {way_out}") from None
    data = entry.get("data") if isinstance(entry, dict) else None
    labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.shape[1:] != (3 * 32 * 32,)
        or labels is None
        or len(labels) != len(data)
        or not all(0 <= label < num_classes for label in labels)
    ):
        raise DataError(
            f"{path} is not a CIFAR batch of {num_classes} classes (a dict of N×3072 uint8 "
            f"'data' and N labels in 0..{num_classes - 1}); {way_out}"
        )
    return data, labels


class _CIFAR(InMemoryDataModule):
    """Shared loading of torchvision's CIFAR folders (``cifar-10-batches-py`` and friends).

    The data set is fetched into ``data_dir`` with torchvision's downloader when it is not
    there yet (once, on the first process of each node: Lightning's ``prepare_data``).

    Args:
        data_dir: the folder that holds (or will hold) torchvision's CIFAR folder.
        download: fetch the data set when it is absent; ``false`` forbids it.
        **kwargs: the arguments of ``InMemoryDataModule`` (``batch_size``,
            ``eval_batch_size``, ``probe_size``, ``random_targets``, ``seed``).
    """

    dataset_cls: type[datasets.CIFAR10]
    input_shape = (3, 32, 32)

    def __init__(self, data_dir: str = "data", download: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.download = download

    @property
    def folder(self) -> Path:
        """Where torchvision's batch files are: ``data_dir/cifar-10-batches-py`` (or -100)."""
        return Path(self.data_dir) / self.dataset_cls.base_folder

    def present(self) -> bool:
        """Whether every batch file is in ``folder``."""
        files = self.dataset_cls.train_list + self.dataset_cls.test_list
        return all((self.folder / name).is_file() for name, _ in files)

    @override
    def prepare_data(self) -> None:
        """Downloads the data set when it is absent and download is on.

        Raises:
            DataNotFoundError: the download failed (no internet, a server error).
        """
        if self.download and not self.present():
            cls = self.dataset_cls
            try:  # checks the archive's md5, then extracts it into data_dir
                download_and_extract_archive(cls.url, self.data_dir, cls.filename, md5=cls.tgz_md5)
            except (OSError, RuntimeError) as err:
                raise DataNotFoundError(
                    f"could not download {cls.__name__} from {cls.url} into {self.data_dir} "
                    f"({str(err).splitlines()[0][:120]}); without internet, put "
                    f"{cls.base_folder} under --data.data_dir"
                ) from None

    @override
    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Reads both splits (downloading them first when absent and download is on).

        Raises:
            DataNotFoundError: the folder holds no valid batches and download is off or failed.
            DataError: a batch file is truncated or damaged (the message names it).
        """
        if not self.present():
            if not self.download:
                raise DataNotFoundError(
                    f"no {self.dataset_cls.__name__} batches under {self.folder}; pass "
                    "--data.data_dir to the folder that holds them, or let faeval fetch them "
                    "(--data.download true, the default)"
                )
            self.prepare_data()
        cls = self.dataset_cls
        splits = {}
        for split, files in (("train", cls.train_list), ("test", cls.test_list)):
            batches = [read_batch(self.folder / name, self.num_classes) for name, _ in files]
            # (N, 3072) rows in CHW order -> (N, 3, 32, 32)
            x = torch.from_numpy(np.concatenate([data for data, _ in batches])).view(-1, 3, 32, 32)
            y = torch.as_tensor([label for _, labels in batches for label in labels])
            splits[split] = (x, y.long())
        return splits


class CIFAR10(_CIFAR):
    """CIFAR-10 (10 classes, 50,000 train / 10,000 test). See the base for the arguments."""

    dataset_cls = datasets.CIFAR10
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)


class CIFAR100(_CIFAR):
    """CIFAR-100 (100 fine classes). See the base for the arguments."""

    dataset_cls = datasets.CIFAR100
    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
