"""DataModules: offline files read faithfully, batches reproducible, errors that say the fix."""

from pathlib import Path

import pytest
import torch
from torchvision import datasets

from faeval.data import CIFAR10, CIFAR100, FashionMNIST, SyntheticLadder, TensorBatches
from faeval.data.fashion_mnist import read_idx
from tests.conftest import FMNIST_DIR, write_fake_cifar


def test_cifar10_reads_the_fake_folder_as_uint8_chw(fake_cifar):
    import pickle

    dm = CIFAR10(data_dir=str(fake_cifar), probe_size=10)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.dtype == torch.uint8 and x.shape == (100, 3, 32, 32) and y.dtype == torch.long
    with open(fake_cifar / "cifar-10-batches-py" / "data_batch_1", "rb") as fh:
        first = pickle.load(fh, encoding="latin1")
    row = torch.from_numpy(first["data"][0]).view(3, 32, 32)  # CIFAR rows are CHW
    assert torch.equal(x[0], row) and y[0].item() == first["labels"][0]
    assert dm.splits["test"][0].shape == (50, 3, 32, 32)


def test_cifar100_reads_fine_labels(tmp_path):
    write_fake_cifar(tmp_path, num_classes=100)
    dm = CIFAR100(data_dir=str(tmp_path), probe_size=10)
    dm.setup()
    assert dm.num_classes == 100 and int(dm.splits["train"][1].max()) < 100


def test_missing_cifar_without_download_names_the_folder_and_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py; pass --data.data_dir"):
        CIFAR10(data_dir=str(tmp_path), download=False).setup()


def test_absent_cifar_is_downloaded_once_then_read(tmp_path, fake_downloader):
    dm = CIFAR10(data_dir=str(tmp_path / "data"), probe_size=10)
    dm.prepare_data()
    dm.setup()
    assert fake_downloader == [datasets.CIFAR10.url]
    assert dm.splits["train"][0].shape == (100, 3, 32, 32)
    CIFAR10(data_dir=str(tmp_path / "data")).prepare_data()  # present now: no second fetch
    assert len(fake_downloader) == 1


def test_download_false_never_downloads(tmp_path, fake_downloader):
    dm = CIFAR10(data_dir=str(tmp_path), download=False)
    dm.prepare_data()
    with pytest.raises(FileNotFoundError, match="no CIFAR10 batches"):
        dm.setup()
    assert fake_downloader == []


def test_an_offline_download_says_what_to_do(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"could not download CIFAR100 .*put cifar-100-python under --data.data_dir",
    ):
        CIFAR100(data_dir=str(tmp_path)).setup()


def test_missing_fashion_mnist_names_the_package_and_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset-fashion-mnist.*--data.data_dir"):
        FashionMNIST(data_dir=str(tmp_path)).setup()


def test_fashion_mnist_reads_the_debian_files():
    dm = FashionMNIST(probe_size=1024)
    dm.setup()
    x, y = dm.splits["train"]
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.uint8
    assert dm.splits["test"][0].shape == (10000, 1, 28, 28)
    assert torch.bincount(y).tolist() == [6000] * 10  # the published class balance
    xp, _ = dm.probe()
    assert abs(xp.mean().item()) < 0.1 and abs(xp.std().item() - 1) < 0.1  # normalised


def test_read_idx_checks_the_header(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        read_idx(bad)
    good = tmp_path / "y-idx1-ubyte"
    good.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([7, 8, 9]))
    assert read_idx(good).tolist() == [7, 8, 9]


def test_uint8_batches_are_normalised_per_channel_after_transfer(fake_cifar):
    dm = CIFAR10(data_dir=str(fake_cifar), probe_size=10)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    xn, yn = dm.on_after_batch_transfer((x, y), 0)
    want = (x.float() / 255 - torch.tensor(dm.mean).view(1, 3, 1, 1)) / torch.tensor(dm.std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(xn, want)
    assert yn is y


def test_batches_cover_every_sample_once_and_repeat_per_epoch():
    x, y = torch.arange(10).float().unsqueeze(1), torch.arange(10)
    epoch = {"k": 0}
    batches = TensorBatches(x, y, 4, shuffle=True, seed=1, epoch=lambda: epoch["k"])
    assert len(batches) == 3
    first = torch.cat([b[1] for b in batches])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(first, torch.cat([b[1] for b in batches]))  # same epoch, same order
    epoch["k"] = 1
    assert not torch.equal(first, torch.cat([b[1] for b in batches]))


def test_random_targets_are_uniform_redrawn_and_leave_test_labels_true():
    dm = SyntheticLadder(
        input_dim=4,
        num_classes=5,
        n_train=20000,
        n_test=100,
        probe_size=50,
        random_targets=True,
        seed=0,
    )
    dm.setup()
    loader = dm.train_dataloader()
    labels0 = torch.cat([b[1] for b in loader])
    counts = torch.bincount(labels0, minlength=5).float()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.02
    x0 = torch.cat([b[0] for b in loader])
    true = dm.teacher.scores(x0).argmax(1)
    assert (labels0 == true).float().mean() < 0.3  # chance is 0.2: not the teacher's labels
    loader.epoch = lambda: 1
    assert not torch.equal(labels0, torch.cat([b[1] for b in loader]))
    xt, yt = next(iter(dm.val_dataloader()))
    assert torch.equal(yt, dm.teacher.scores(xt).argmax(1))


def test_probe_size_larger_than_the_test_split_is_refused(fake_cifar):
    with pytest.raises(ValueError, match="probe_size=1024 exceeds the 50 test samples"):
        CIFAR10(data_dir=str(fake_cifar)).setup()


def test_fmnist_dir_constant_matches_the_debian_package():
    assert Path(FashionMNIST().data_dir) == FMNIST_DIR
