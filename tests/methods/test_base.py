"""The method template's own checks: the optimizer's settings."""

from __future__ import annotations

import logging
from functools import partial

import pytest
import torch

from faeval.backbones import ResMLP
from faeval.errors import ConfigError
from faeval.methods import DFA

BACKBONE = partial(ResMLP, d_hidden=8, num_blocks=2)


def method(optimizer) -> DFA:
    return DFA((6,), 3, backbone=BACKBONE, optimizer=optimizer)


@pytest.mark.parametrize(
    ("optimizer", "named"),
    [
        (partial(torch.optim.Adam, lr=-0.1), "Invalid learning rate: -0.1"),
        (partial(torch.optim.SGD, lr=-2.0), "Invalid learning rate: -2.0"),
        (partial(torch.optim.Adam, betas=(1.5, 0.9)), "Invalid beta parameter at index 0: 1.5"),
    ],
)
def test_settings_the_optimizer_refuses_are_one_line_naming_them(optimizer, named):
    with pytest.raises(ConfigError) as err:
        method(optimizer).configure_optimizers()
    message = str(err.value)
    assert message == (
        f"the optimizer refused its settings: {named}; set --model.optimizer.lr (and the other "
        "--model.optimizer.* options) to values it accepts, e.g. lr 1e-3"
    )


def test_a_learning_rate_of_zero_is_said_in_the_log(caplog):
    caplog.set_level(logging.WARNING, logger="faeval")
    method(partial(torch.optim.Adam, lr=1e-3)).configure_optimizers()
    assert caplog.messages == []
    optimizer = method(partial(torch.optim.SGD, lr=0.0)).configure_optimizers()
    assert optimizer.param_groups[0]["lr"] == 0  # still built: a zero-step run may be meant
    assert caplog.messages == [
        "the optimizer's learning rate is 0: the network will not train; set "
        "--model.optimizer.lr, e.g. 1e-3"
    ]
