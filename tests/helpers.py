"""Small networks and utilities shared by tests (plain functions, no fixtures)."""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch import Tensor, nn

from faeval.backbones import LayeredBackbone

#: Command-line flags for a quiet run: no progress bar, summary or per-epoch table.
QUIET = [
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--diagnostics.verbose", "false",
    "--trainer.log_every_n_steps", "1",
]  # fmt: skip

#: Command-line flags for a run on a tiny synthetic task (seconds on one core).
TINY_RUN = [
    "--data", "SyntheticLadder",
    "--data.input_dim", "8", "--data.num_classes", "3",
    "--data.n_train", "128", "--data.n_test", "64",
    "--data.batch_size", "32", "--data.probe_size", "64",
    "--model.backbone.d_hidden", "8", "--model.backbone.num_blocks", "2",
    *QUIET,
]  # fmt: skip


class LinearNet(LayeredBackbone):
    """h_0 = W_e x; h_l = h_{l-1} + W_l h_{l-1} (or W_l h_{l-1}); logits = W_h h_L. No LN."""

    def __init__(
        self, input_shape=(6,), num_classes=3, d=5, num_blocks=3, residual_add: bool = True
    ) -> None:
        super().__init__(input_shape, num_classes)
        self.residual_add = residual_add
        self.embed = nn.Linear(input_shape[0], d)
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(num_blocks))
        for block in self.blocks:
            nn.init.normal_(block.weight, std=0.3)
        self.head = nn.Linear(d, num_classes)

    def readout(self, h: Tensor) -> Tensor:
        return self.head(h)


def reference_states(backbone: LayeredBackbone, x: Tensor) -> tuple[list[Tensor], Tensor]:
    """h_0..h_L and logits from a forward written out here, states retaining their grads."""
    h = backbone.embed(x)
    h.retain_grad()
    states = [h]
    for block in backbone.blocks:
        h = h + block(h) if backbone.residual_add else block(h)
        h.retain_grad()
        states.append(h)
    return states, backbone.readout(h)


class GradRecorder(Callback):
    """Records every parameter's gradient just before each optimizer step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append(
            {
                n: p.grad.detach().clone()
                for n, p in pl_module.named_parameters()
                if p.grad is not None
            }
        )


class EpochMetric(Callback):
    """Records a method's epoch mean of ``name`` at every epoch end."""

    def __init__(self, name: str) -> None:
        self.name, self.values = name, []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.values.append(pl_module.epoch_means()[self.name])  # logged after this hook


def quiet_trainer(tmp_path, **kwargs) -> Trainer:
    """A CPU trainer without progress bar, summary or checkpoints, logging under tmp_path."""
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


def sgd(lr: float = 0.0):
    """An optimizer factory for methods (``optimizer=`` argument); picklable for hparams."""
    return functools.partial(torch.optim.SGD, lr=lr)


@contextlib.contextmanager
def tensorboard_server(logdir: Path) -> Iterator[Callable[..., object]]:
    """Serves ``logdir`` with TensorBoard on a free local port; yields ``get(path, body=None)``.

    ``get`` asks TensorBoard's HTTP data API what the browser asks it (JSON in, JSON out).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
         "--host", "127.0.0.1", "--reload_interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def get(path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data, headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                get("/data/plugins_listing")
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        yield get
    finally:
        server.terminate()
        server.wait(timeout=30)
