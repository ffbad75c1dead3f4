"""What faeval needs of anyone's data module: shape, class count, probe batch, batch form."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch
from lightning.pytorch import LightningDataModule

from faeval.backbones import ResMLP
from faeval.cli import run
from faeval.data import SyntheticLadder
from faeval.data.contract import (
    DataContractError,
    check_labels,
    given_probe,
    input_shape_of,
    num_classes_of,
    probe_batch,
)
from faeval.diagnostics import measure_layers
from faeval.methods import DFA
from faeval.protocol.measure import measure_protocol
from tests.helpers import QUIET, Blobs
from tests.protocol.cli_args import protocol_args


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


@pytest.mark.parametrize(
    ("y", "expected"),
    [
        (torch.tensor([0.0, 2.0]), r"are torch.float32 of shape \(2,\); .*give y as a torch.long"),
        (torch.eye(3)[[0, 2]], r"are torch.float32 of shape \(2, 3\);.*y.argmax\(1\)"),
        (torch.tensor([0, 2], dtype=torch.int32), r"are torch.int32 of shape \(2,\)"),
        (torch.tensor([0, 3]), r"include 3, outside 0..2 \(num_classes=3\);.*at least 4"),
        (torch.tensor([-1, 2]), r"include -1, outside 0..2"),
    ],
    ids=["float", "one-hot", "int32", "too large", "negative"],
)
def test_labels_that_are_not_class_indices_are_refused_saying_how_to_give_them(y, expected):
    with pytest.raises(DataContractError, match=r"^the labels of Blobs's training batches "):
        check_labels(y, 3, "Blobs's training batches")
    with pytest.raises(DataContractError, match=expected):
        check_labels(y, 3, "Blobs's training batches")


def test_class_indices_pass():
    check_labels(torch.tensor([0, 1, 2]), 3, "x")
    check_labels(torch.tensor([2, 0], dtype=torch.uint8), 3, "x")  # cross_entropy takes bytes
    check_labels(torch.tensor([], dtype=torch.long), 3, "x")  # an empty batch has no bad label


@pytest.mark.parametrize(
    ("labels", "expected"),
    [("float", r"are torch.float32 of shape"), ("shifted", r"include 4, outside 0..2")],
)
@pytest.mark.parametrize(
    "validation", [True, False], ids=["first the validation batches", "first the training"]
)
def test_a_data_modules_bad_labels_are_refused_at_the_first_batch(
    quiet_trainer, labels, expected, validation
):
    """Whichever batch comes first (the sanity check's, or a training batch) is checked."""
    method = DFA((6,), 3, backbone=partial(ResMLP, d_hidden=8, num_blocks=2))
    stage = "validation" if validation else "training"
    sanity = dict(num_sanity_val_steps=1, limit_val_batches=1) if validation else {}
    trainer = quiet_trainer(max_steps=1, **sanity)
    with pytest.raises(
        DataContractError, match=rf"^the labels of Blobs's {stage} batches {expected}"
    ):
        trainer.fit(method, datamodule=Blobs(labels=labels))


def test_the_probe_batchs_labels_are_checked_before_a_measurement():
    method = DFA((6,), 3, backbone=partial(ResMLP, d_hidden=8, num_blocks=2))
    x, y = torch.randn(8, 6), torch.tensor([0, 1, 2, 3] * 2)
    with pytest.raises(DataContractError, match=r"^the labels of the probe batch include 3"):
        measure_layers(method, x, y)
    with pytest.raises(DataContractError, match=r"^the labels of the probe batch are torch.flo"):
        measure_protocol(method, x, y.float())


@pytest.fixture
def notes(monkeypatch, caplog) -> pytest.LogCaptureFixture:
    """faeval's log from here on (``.messages``), the once-per-process memory emptied first."""
    monkeypatch.setattr("faeval.data.contract._said", set())
    caplog.set_level(logging.WARNING, logger="faeval")
    caplog.clear()
    return caplog


def test_a_probe_smaller_than_asked_is_said_once_with_the_way_out(notes):
    dm = Blobs()  # 96 validation samples, the default probe 1024
    x, _ = probe_batch(dm)
    probe_batch(dm)  # taken again (the protocol's callback does): said once
    assert len(x) == 96
    assert notes.messages == [
        "the probe batch holds 96 samples, not 1024: Blobs's validation data has no more; the "
        "diagnostics are noisier on fewer (give it more validation samples, or set its "
        "probe_size to 96)"
    ]
    dm.probe_size = 96  # asked for what there is: nothing to say
    notes.clear()
    probe_batch(Blobs(n=160))
    probe_batch(dm)
    assert [n.split(":")[0] for n in notes.messages] == [
        "the probe batch holds 80 samples, not 1024"
    ]


def test_a_synthetic_ladder_with_a_small_test_split_says_its_probe_is_smaller(notes):
    ladder = SyntheticLadder(input_dim=4, num_classes=3, n_train=64, n_test=100)
    SyntheticLadder(input_dim=4, num_classes=3, n_train=64, n_test=100)  # rebuilt: said once
    assert ladder.probe_size == 100
    assert notes.messages == [
        "the probe batch holds 100 samples, not 1024: SyntheticLadder's test split "
        "(n_test=100) has no more; the diagnostics are noisier on fewer (pass --data.n_test "
        "1024, or --data.probe_size 100)"
    ]
    notes.clear()
    SyntheticLadder(input_dim=4, num_classes=3, n_train=64, n_test=100, probe_size=100)
    assert notes.messages == []


def test_a_run_on_a_small_validation_set_says_so_once_in_its_log(notes, tmp_path):
    """Every taker of the probe (diagnostics each epoch, the protocol, the audit) shares it."""
    run(["fit", "--model", "DFA", "--data", "tests.helpers.Blobs", *QUIET, *protocol_args(),
         "--model.backbone.d_hidden", "8", "--model.backbone.num_blocks", "2",
         "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    said = [m for m in notes.messages if m.startswith("the probe batch holds")]
    assert said == [
        "the probe batch holds 96 samples, not 1024: Blobs's validation data has no more; the "
        "diagnostics are noisier on fewer (give it more validation samples, or set its "
        "probe_size to 96)"
    ]
