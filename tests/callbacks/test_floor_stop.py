"""FloorStopping on scripted ‖g_L‖ sequences: stops exactly when the floor is crossed."""

import math
from functools import partial

import pytest
from lightning.pytorch import Callback

from faeval.backbones import ResMLP
from faeval.callbacks import FloorStopping
from faeval.data import SyntheticLadder
from faeval.methods import BP
from tests.helpers import quiet_trainer


class Scripted(Callback):
    """Logs ``diag/g_L`` from a list, one value per epoch, as Diagnostics would."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("diag/g_L", self.values[trainer.current_epoch])


@pytest.mark.parametrize(
    ("values", "epochs_run"),
    [
        ([1e-3, 1e-5, 2e-7, 9e-8, 1e-9, 1e-9], 4),  # crosses 1e-7 in epoch 4
        ([1e-3, 1e-7, 1e-7, 1e-7, 1e-7, 1e-7], 6),  # at the floor is not under it
        ([1e-3, 2e-3, 5e-3, 1e-3, 4e-3, 1e-3], 6),  # no "patience" stop: never improving is fine
        ([1e-3, math.nan, 1e-3, 1e-3, 1e-3, 1e-3], 2),  # a non-finite ‖g_L‖ stops
    ],
)
def test_stops_once_g_L_is_under_the_floor(tmp_path, values, epochs_run):
    dm = SyntheticLadder(
        input_dim=4, num_classes=3, n_train=32, n_test=16, batch_size=32, probe_size=16, seed=0
    )
    model = BP((4,), 3, backbone=partial(ResMLP, d_hidden=4, num_blocks=1))
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=len(values),
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[Scripted(values), FloorStopping(grad_floor=1e-7)],
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.current_epoch == epochs_run
