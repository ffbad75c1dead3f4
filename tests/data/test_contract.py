"""What faeval needs of anyone's data module: shape, class count, probe batch, batch form."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningDataModule

from faeval.data import SyntheticLadder
from faeval.data.contract import (
    DataContractError,
    given_probe,
    input_shape_of,
    num_classes_of,
    probe_batch,
)
from tests.helpers import Blobs


def validation_samples(dm: Blobs) -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup("validate")
    base = dm.val_set.dataset
    return base.tensors


def test_shape_is_read_off_a_batch_and_the_class_count_off_the_attribute_or_the_data_set():
    assert input_shape_of(Blobs(dim=7)) == (7,)
    assert num_classes_of(Blobs(classes=5)) == 5
    assert num_classes_of(Blobs(classes=4, declare=False, classes_attr=True)) == 4  # via Subset
    ladder = SyntheticLadder(input_dim=9, num_classes=6)
    assert input_shape_of(ladder) == (9,) and num_classes_of(ladder) == 6  # its own attributes


def test_a_data_module_that_cannot_say_its_classes_is_told_what_to_set():
    with pytest.raises(
        DataContractError, match=r"^Blobs does not say how many classes.*num_classes"
    ):
        num_classes_of(Blobs(declare=False))

    class NoValidation(LightningDataModule):
        pass

    with pytest.raises(DataContractError, match=r"no input_shape attribute.*no val_dataloader"):
        input_shape_of(NoValidation())


def test_the_probe_is_the_first_validation_samples_through_the_transfer_hooks():
    dm = Blobs(scale=2.0)
    dm.probe_size = 50  # across two validation batches of 40
    x, y = probe_batch(dm)
    xs, ys = validation_samples(dm)
    torch.testing.assert_close(x, 2.0 * xs[:50], rtol=0, atol=0)
    assert torch.equal(y, ys[:50])
    del dm.probe_size  # default: 1024, more than there are: all 96
    assert len(probe_batch(dm)[0]) == 96


def test_faevals_own_data_modules_give_their_own_probe():
    ladder = SyntheticLadder(input_dim=4, num_classes=3, n_train=64, n_test=32, probe_size=16)
    x, y = probe_batch(ladder)
    own_x, own_y = ladder.probe()
    torch.testing.assert_close(x, own_x, rtol=0, atol=0)
    assert torch.equal(y, own_y)
    assert len(x) == 16


def test_batches_must_be_input_label_pairs():
    with pytest.raises(DataContractError, match=r"\(inputs, labels\) tensor pairs.*dict"):
        given_probe({"x": torch.zeros(2)}, "cpu")
    x, y = given_probe((torch.ones(3, 2), torch.zeros(3, dtype=torch.long)), "cpu")
    assert x.shape == (3, 2) and y.dtype == torch.long
