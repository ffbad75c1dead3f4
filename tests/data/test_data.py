"""DataModules: offline files read faithfully, batches reproducible, errors that say the fix."""

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from faeval.data import CIFAR10, CIFAR100, FashionMNIST, SyntheticLadder, TensorBatches
from faeval.data.fashion_mnist import read_idx
from faeval.errors import DataError
from tests.conftest import FMNIST_DIR, write_fake_cifar


def test_cifar10_reads_the_fake_folder_as_uint8_chw(fake_cifar):
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
    for raw in (b"\x00\x00\x08\x03\x00\x00", b"\x00\x00\x08\x01\x00\x00\x00\x05\x07"):
        bad.write_bytes(raw)  # cut inside the header; 1 value of the 5 the header says
        with pytest.raises(DataError, match=rf"^{bad} is truncated .*dataset-fashion-mnist"):
            read_idx(bad)
    good = tmp_path / "y-idx1-ubyte"
    good.write_bytes(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([7, 8, 9]))
    assert read_idx(good).tolist() == [7, 8, 9]


def write_fake_fmnist(folder: Path, n: int = 20) -> Path:
    """The four Fashion-MNIST IDX files, gzipped as Debian ships them, with n random samples."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for stem, shape in [("images-idx3-ubyte", (n, 28, 28)), ("labels-idx1-ubyte", (n,))]:
        high = 256 if len(shape) == 3 else 10
        values = torch.randint(high, shape, generator=gen, dtype=torch.uint8).numpy().tobytes()
        header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
        for prefix in ("train", "t10k"):
            (folder / f"{prefix}-{stem}.gz").write_bytes(gzip.compress(header + values))
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scribble(path: Path) -> None:
    """Overwrites the middle of the file with bytes that belong to no format."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle - 20 : middle + 20] = b"\xff" * 40
    raw[:8] = b"\x80\x02\xff\xff\xff\xff\xff\xff"  # a pickle (or gzip) header no reader takes
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [truncate, scribble])
@pytest.mark.parametrize("name", ["data_batch_3", "test_batch"])
def test_a_damaged_cifar_file_is_named_with_the_way_out(fake_cifar, name, damage):
    path = fake_cifar / "cifar-10-batches-py" / name
    damage(path)
    with pytest.raises(DataError) as err:
        CIFAR10(data_dir=str(fake_cifar), download=False, probe_size=10).setup()
    message = str(err.value)
    assert message.startswith(f"{path} is truncated or damaged (") and "\n" not in message
    assert "delete it and run again to download it afresh" in message


def test_a_cifar_file_of_another_shape_is_named(fake_cifar):
    path = fake_cifar / "cifar-10-batches-py" / "data_batch_2"
    with open(path, "wb") as fh:  # a readable pickle, but 10 labels beside 20 rows of 3071
        pickle.dump({"data": np.zeros((20, 3071), np.uint8), "labels": [0] * 10}, fh)
    with pytest.raises(DataError, match=f"{path} is not a CIFAR batch of 10 classes"):
        CIFAR10(data_dir=str(fake_cifar), download=False, probe_size=10).setup()


@pytest.mark.parametrize("damage", [truncate, scribble])
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_a_damaged_fashion_mnist_file_is_named_with_the_way_out(tmp_path, name, damage):
    folder = write_fake_fmnist(tmp_path / "fmnist")
    FashionMNIST(data_dir=str(folder), probe_size=10).setup()  # intact, it reads
    damage(folder / name)
    with pytest.raises(DataError) as err:
        FashionMNIST(data_dir=str(folder), probe_size=10).setup()
    message = str(err.value)
    assert message.startswith(f"{folder / name} is truncated or damaged"), message
    assert "dataset-fashion-mnist" in message and "\n" not in message


def test_fashion_mnist_labels_that_do_not_match_the_images_are_named(tmp_path):
    folder = write_fake_fmnist(tmp_path / "fmnist")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])))  # 3 labels
    with pytest.raises(DataError, match=rf"t10k-images.* and {labels} are not a Fashion-MNIST"):
        FashionMNIST(data_dir=str(folder), probe_size=10).setup()


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


@pytest.mark.parametrize("random_targets", [0, 3])
def test_an_epochs_batches_are_its_generators_targets_then_permutation(random_targets):
    x, y = torch.randn(10, 2), torch.arange(10) % 3
    batches = TensorBatches(x, y, 4, shuffle=True, seed=5, epoch=lambda: 2,
                            random_targets=random_targets)  # fmt: skip
    gen = torch.Generator().manual_seed(5 + 2)  # the reference: seed + epoch, drawn by hand
    labels = torch.randint(3, (10,), generator=gen) if random_targets else y
    order = torch.randperm(10, generator=gen)
    got = list(batches)
    assert [len(b[0]) for b in got] == [4, 4, 2]
    for (xb, yb), idx in zip(got, order.split(4), strict=True):
        assert torch.equal(xb, x[idx]) and torch.equal(yb, labels[idx])


@pytest.mark.parametrize("training", [False, True])
def test_ranks_with_batch_b_see_one_process_batch_nb_split_in_contiguous_chunks(training):
    """n = 9, N = 2 ranks, B = 2: global batches of 4, 4, 1; the last, shorter than the ranks,
    is dropped in training and left to rank 0 in evaluation."""
    x, y = torch.randn(9, 2), torch.arange(9)
    args = dict(shuffle=True, seed=3, random_targets=4, training=training)
    alone = list(TensorBatches(x, y, 4, **args))
    ranks = [list(TensorBatches(x, y, 2, **args, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(r) for r in ranks] == ([2, 2] if training else [3, 2])
    for i, (xb, yb) in enumerate(alone[: len(ranks[1])]):
        assert torch.equal(torch.cat([r[i][0] for r in ranks]), xb)
        assert torch.equal(torch.cat([r[i][1] for r in ranks]), yb)
    if not training:
        assert torch.equal(ranks[0][2][0], alone[2][0]) and torch.equal(ranks[0][2][1], alone[2][1])


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
