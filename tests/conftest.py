"""Shared fixtures: offline data only (synthetic in memory, a fake CIFAR folder, real FMNIST).

Tests that read Fashion-MNIST need Debian's dataset-fashion-mnist (tools/install.sh installs
it); without it they fail with the loader's error, which names the package.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from faeval.data import SyntheticLadder
from tests.helpers import quiet_trainer as build_quiet_trainer

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    """Tests are small: one thread avoids oversubscribing CI's two cores; seeds are fixed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def write_fake_cifar(
    root: Path, n_train: int = 100, n_test: int = 50, num_classes: int = 10, seed: int = 0
) -> Path:
    """Writes a format-faithful ``cifar-10-batches-py`` (or ``cifar-100-python``) folder.

    The same pickled dicts that torchvision reads (str keys, as the Python 2 pickles load;
    (N, 3072) uint8 rows in CHW order), in the same files (5 training batches for
    CIFAR-10). Only the md5 sums differ; faeval checks those only when downloading.
    """
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        label_key = "labels"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, meta_key = "test_batch", "batches.meta", "label_names"
    else:
        folder = root / "cifar-100-python"
        label_key = "fine_labels"
        train_files, test_file = ["train"], "test"
        meta_file, meta_key = "meta", "fine_label_names"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, n: int) -> None:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, label_key: labels}, fh, protocol=2)

    per = n_train // len(train_files)
    for name in train_files:
        dump(name, per)
    dump(test_file, n_test)
    with open(folder / meta_file, "wb") as fh:
        pickle.dump({meta_key: [f"class{i}" for i in range(num_classes)]}, fh, protocol=2)
    return folder


@pytest.fixture(autouse=True)
def _never_download(monkeypatch):
    """Tests never reach the network: CIFAR's downloader fails as it would offline."""

    def offline(url, *args, **kwargs):
        raise OSError(f"tests do not download ({url})")

    monkeypatch.setattr("faeval.data.cifar.download_and_extract_archive", offline)


@pytest.fixture
def fake_downloader(monkeypatch) -> list[str]:
    """CIFAR's downloader replaced by one that writes the fake folder; returns its calls."""
    calls: list[str] = []

    def download(url, root, filename=None, md5=None):
        calls.append(url)
        write_fake_cifar(Path(root), num_classes=100 if "100" in url else 10)

    monkeypatch.setattr("faeval.data.cifar.download_and_extract_archive", download)
    return calls


@pytest.fixture
def fake_cifar(tmp_path: Path) -> Path:
    """A tiny fake CIFAR-10 folder; returns the data_dir to pass to the data module."""
    write_fake_cifar(tmp_path / "cifar")
    return tmp_path / "cifar"


@pytest.fixture
def tiny_ladder() -> SyntheticLadder:
    """A learnable synthetic task small enough for a few CPU epochs in a second."""
    return SyntheticLadder(
        input_dim=16,
        num_classes=4,
        alpha=0.5,
        depth=2,
        width=32,
        n_train=512,
        n_test=256,
        batch_size=64,
        probe_size=128,
        seed=0,
    )


@pytest.fixture
def quiet_trainer(tmp_path) -> Callable[..., Trainer]:
    """Builds CPU trainers without logger, progress bar, summary, checkpoints or validation."""
    return partial(build_quiet_trainer, tmp_path)
