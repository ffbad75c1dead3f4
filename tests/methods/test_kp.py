"""KP: B receives W's update and decay, so B − W shrinks as (1 − λ)^t and the angle closes."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from faeval.backbones import ResMLP
from faeval.data import TensorBatches
from faeval.diagnostics import matrix_angle
from faeval.errors import ConfigError
from faeval.methods import KP, LayerFA
from tests.helpers import GradRecorder, quiet_trainer, sgd

BACKBONE = partial(ResMLP, d_hidden=16, num_blocks=2)


def test_the_feedback_update_is_the_forward_update_plus_decay(tmp_path):
    """One SGD step: W ← (1 − λ)W − ηG and B ← (1 − λ)B − ηG, G = W's gradient (B's too)."""
    torch.manual_seed(0)
    lr, decay = 0.1, 0.05
    method = KP((12,), 4, optimizer=sgd(lr), decay=decay, backbone=BACKBONE)
    before = [(w.detach().clone(), b.detach().clone()) for _, w, b in method.feedback_pairs()]
    recorder = GradRecorder()
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    loader = TensorBatches(x, y, batch_size=32)
    quiet_trainer(tmp_path, max_steps=1, callbacks=[recorder]).fit(
        method, train_dataloaders=loader, val_dataloaders=loader
    )
    grads = recorder.grads[0]
    names = [n for n, _ in method.layers()]
    for k, (name, (w0, b0), (_, w1, b1)) in enumerate(
        zip(names, before, method.feedback_pairs(), strict=True)
    ):
        g = grads[f"backbone.{name}.weight"]
        assert torch.equal(grads[f"feedback.{k}"], g)  # B gets W's gradient (Bᵀ's: transposed)
        torch.testing.assert_close(w1, (1 - decay) * w0 - lr * g)
        torch.testing.assert_close(b1, (1 - decay) * b0 - lr * g)
        torch.testing.assert_close(b1 - b0, (w1 - w0) - decay * (b0 - w0))


def test_training_aligns_feedback_with_the_weights(tiny_ladder, quiet_trainer):
    """Under Adam too the updates are equal, so B − W = (1 − λ)^t (B − W at init) exactly."""
    torch.manual_seed(0)
    decay = 0.05
    adam = partial(torch.optim.Adam, lr=1e-2)
    method = KP(tiny_ladder.input_shape, 4, optimizer=adam, decay=decay, backbone=BACKBONE)
    control = LayerFA(tiny_ladder.input_shape, 4, optimizer=adam, backbone=BACKBONE)
    start = [(b - w).detach().clone() for _, w, b in method.feedback_pairs()]
    assert min(matrix_angle(w, b) for _, w, b in method.feedback_pairs()) > 80
    for m in (method, control):
        quiet_trainer(max_epochs=10).fit(m, datamodule=tiny_ladder)
    steps = method.global_step
    assert steps == 80
    for d0, (_, w, b) in zip(start, method.feedback_pairs(), strict=True):
        torch.testing.assert_close(b - w, (1 - decay) ** steps * d0, rtol=0, atol=1e-5)
    angles = [matrix_angle(w, b) for _, w, b in method.feedback_pairs()]
    fixed = [matrix_angle(w, b) for _, w, b in control.feedback_pairs()]
    assert max(angles) < 20  # from ~90° at init: λ = 0.05 over 80 steps (measured 2.5°–11°)
    assert max(angles) < min(fixed)  # W aligns a little with a fixed B too; B learning does more


def test_decay_must_be_a_fraction():
    with pytest.raises(ConfigError, match=r"decay=0.0; set --model.decay"):
        KP((12,), 4, decay=0.0, backbone=BACKBONE)
