"""Hyperparameters as plain data: a method built from Python saves checkpoints that load
weights-only and rebuild, as those of ``faeval fit`` do."""

from __future__ import annotations

import functools

import torch

from faeval.backbones import ResMLP
from faeval.data import SyntheticLadder
from faeval.hparams import CLI_INSTANTIATOR, class_config, plain, plain_hparams
from faeval.methods import DFA
from tests.helpers import sgd


def _local() -> None:
    """Not a module-level name: not importable."""


def test_plain_turns_classes_and_factories_into_class_path_dicts():
    factory = functools.partial(ResMLP, d_hidden=8, w2_std=0.5)
    assert plain(factory) == {
        "class_path": "faeval.backbones.resmlp.ResMLP",
        "init_args": {"d_hidden": 8, "w2_std": 0.5},
    }
    assert plain(torch.optim.Adam) == {"class_path": "torch.optim.adam.Adam"}
    assert plain((3, 32, 32)) == [3, 32, 32] and plain({"a": (1,)}) == {"a": [1]}
    assert plain(None) is None and plain(True) is True and plain(float("inf")) == "inf"
    assert plain(sgd) == "tests.helpers.sgd"  # an importable function: its path
    assert plain(lambda: 0).startswith("<function")  # not importable: text, never a pickle
    assert plain(_local) == "tests.test_hparams._local"


def test_recorded_hparams_name_the_class_and_how_lightning_rebuilds_it():
    out = plain_hparams(DFA, {"input_shape": (8,), "penalty": 0.1})
    assert out == {
        "_class_path": "faeval.methods.dfa.DFA",
        "input_shape": [8],
        "penalty": 0.1,
        "_instantiator": CLI_INSTANTIATOR,
    }
    assert class_config(out, skip={"input_shape"}) == {
        "class_path": "faeval.methods.dfa.DFA",
        "init_args": {"penalty": 0.1},
    }


def test_a_checkpoint_of_a_method_built_from_python_loads_weights_only_and_rebuilds(
    quiet_trainer, tmp_path
):
    data = SyntheticLadder(input_dim=8, num_classes=3, n_train=64, n_test=32, probe_size=16)
    backbone = functools.partial(ResMLP, d_hidden=8, num_blocks=2)
    method = DFA((8,), 3, backbone=backbone, optimizer=sgd(0.1), penalty=0.01)
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(method, datamodule=data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    ckpt = torch.load(tmp_path / "run.ckpt", weights_only=True)  # no pickled objects
    hp = ckpt["hyper_parameters"]
    assert hp["_class_path"].endswith(".DFA") and hp["backbone"]["init_args"]["d_hidden"] == 8
    assert ckpt["datamodule_hyper_parameters"]["_class_path"].endswith(".SyntheticLadder")
    rebuilt = DFA.load_from_checkpoint(tmp_path / "run.ckpt", weights_only=True)
    assert type(rebuilt.backbone) is ResMLP and rebuilt.penalty == 0.01
    for key, value in method.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
