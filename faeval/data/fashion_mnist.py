"""Fashion-MNIST from the IDX files that Debian's ``dataset-fashion-mnist`` installs."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from faeval.data.base import InMemoryDataModule
from faeval.errors import DataError, DataNotFoundError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


#: The way out of a damaged file, in each message that names one.
REINSTALL = (
    "reinstall Debian's dataset-fashion-mnist (apt-get install --reinstall "
    "dataset-fashion-mnist) or copy intact files there"
)


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (gzipped or not) of unsigned bytes.

    Raises:
        DataError: the file is truncated or damaged (a broken gzip stream, a header that is
            not a uint8 IDX file's, fewer or more values than the header says).
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # cut short, or not gzip
        raise DataError(f"{path} is truncated or damaged ({err}); {REINSTALL}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (header {raw[:4]!r}); {REINSTALL}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated inside its header; {REINSTALL}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(
            f"{path} is truncated or damaged: it holds {data.size} values, its header says "
            f"{dims}; {REINSTALL}"
        )
    return data.reshape(dims)


class FashionMNIST(InMemoryDataModule):
    """Fashion-MNIST, the offline real data set (10 classes, 60,000 train / 10,000 test).

    Args:
        data_dir: folder with the four IDX files (``.gz`` or not); by default where
            Debian's package ``dataset-fashion-mnist`` puts them.
        **kwargs: the arguments of ``InMemoryDataModule`` (``batch_size``,
            ``eval_batch_size``, ``probe_size``, ``random_targets``, ``seed``).
    """

    input_shape = (1, 28, 28)
    num_classes = 10
    mean = (0.2860,)
    std = (0.3530,)

    def __init__(self, data_dir: str = DEBIAN_DIR, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir

    def _find(self, stem: str) -> Path:
        folder = Path(self.data_dir)
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
        raise DataNotFoundError(
            f"no Fashion-MNIST file {stem}[.gz] under {folder}; install Debian's package "
            f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist, files in "
            f"{DEBIAN_DIR}) or pass --data.data_dir to the folder that holds the IDX files"
        )

    @override
    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Reads both splits.

        Raises:
            FileNotFoundError: a file is missing; the message names the package and option.
            DataError: a file is damaged, or the files do not hold a Fashion-MNIST split.
        """
        splits = {}
        for split, (images, labels) in FILES.items():
            # (N, 28, 28) -> (N, 1, 28, 28)
            x = torch.from_numpy(read_idx(self._find(images)).copy()).unsqueeze(1)
            y = torch.from_numpy(read_idx(self._find(labels)).astype(np.int64))
            top = int(y.max()) if y.numel() else None
            if x.shape[1:] != (1, 28, 28) or y.shape != x.shape[:1] or (top or 0) >= 10:
                raise DataError(
                    f"{self._find(images)} and {self._find(labels)} are not a Fashion-MNIST "
                    f"split (images {tuple(x.shape[:1] + x.shape[2:])}, {len(y)} labels up "
                    f"to {top}); point --data.data_dir at the four Fashion-MNIST IDX files"
                )
            splits[split] = (x, y)
        return splits
