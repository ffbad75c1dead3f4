"""Small networks and utilities shared by tests (plain functions, no fixtures)."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from faeval.backbones import LayeredBackbone, Wrapped
from faeval.data import TensorBatches
from faeval.methods.layerwise import FeedbackGrad
from faeval.resume import AtomicCheckpointIO

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


class PlainResNet(nn.Module):
    """A residual network written without faeval in mind, as a researcher's own model is.

    h = stem(x); each block adds its branch to h (``skip_inside``: the block adds it
    itself, as torchvision's blocks do); logits = head(norm(h)).
    """

    def __init__(
        self, input_dim=12, num_classes=4, width=16, depth=3, skip_inside: bool = False
    ) -> None:
        super().__init__()
        self.skip_inside = skip_inside
        self.stem = nn.Linear(input_dim, width)
        self.layers = nn.ModuleList(
            (SkipBlock if skip_inside else Branch)(width) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h) if self.skip_inside else h + layer(h)
        return self.head(self.norm(h))


class Branch(nn.Sequential):
    """A pre-LN residual branch, LN -> Linear -> tanh -> Linear."""

    def __init__(self, width: int) -> None:
        super().__init__(
            nn.LayerNorm(width), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width)
        )


class SkipBlock(nn.Module):
    """A block that adds its own skip connection: h + branch(h)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.branch = Branch(width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.branch(h)


def wrap_plain_resnet(input_shape, num_classes, skip_inside: bool = False) -> Wrapped:
    """A ``PlainResNet`` in the layered interface (a backbone factory for the methods)."""
    net = PlainResNet(input_shape[0], num_classes, skip_inside=skip_inside)
    return Wrapped(
        net.stem, net.layers, [net.norm, net.head], input_shape, residual_add=not skip_inside
    )


class Gate(nn.Module):
    """A researcher's own activation with a trained slope per feature: x·sigmoid(s ⊙ x)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.slope = nn.Parameter(1 + 0.1 * torch.randn(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.slope * x)


class GatedBranch(nn.Module):
    """A residual branch of one's own: gain ⊙ fc2(gate(fc1(LN(h)))), its gain a parameter."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.gate = Gate(2 * width)
        self.gain = nn.Parameter(torch.full((width,), 0.5))

    def forward(self, h: Tensor) -> Tensor:
        return self.gain * self.fc2(self.gate(self.fc1(self.norm(h))))


class NormBranch(nn.Module):
    """A branch with BatchNorm, whose running statistics its forward updates in place.

    fc1 has no bias, as before any BatchNorm: such a bias's true gradient is 0, its computed
    one rounding noise, which Adam turns into steps of size lr whose sign the rounding picks.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width, bias=False), nn.Linear(width, width)
        self.bn = nn.BatchNorm1d(width)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(h))))


def wrap_gated_net(input_shape, num_classes, width: int = 16, depth: int = 3) -> Wrapped:
    """A network of modules faeval does not know: gated branches and a gated readout."""
    blocks = [GatedBranch(width) for _ in range(depth)]
    readout = [nn.LayerNorm(width), Gate(width), nn.Linear(width, num_classes)]
    return Wrapped(nn.Linear(input_shape[0], width), blocks, readout, input_shape)


def wrap_norm_net(input_shape, num_classes, width: int = 16, depth: int = 2) -> Wrapped:
    """Ordinary layers with BatchNorm inside a branch class faeval does not know."""
    blocks = [NormBranch(width) for _ in range(depth)]
    readout = [nn.LayerNorm(width), nn.Linear(width, num_classes)]
    return Wrapped(nn.Linear(input_shape[0], width), blocks, readout, input_shape)


class Blobs(LightningDataModule):
    """A researcher's own data module, written without faeval in mind: Gaussian blobs in
    ``DataLoader``s, inputs scaled by ``scale`` after transfer (as a normalising hook does).

    Args:
        declare: set ``num_classes`` (else only the validation set's ``classes`` tell it).
        classes_attr: give the validation set (inside a ``Subset``) a ``classes`` list.
        labels: how the labels come: class indices (int64), as floats, or shifted up by 2
            (past the declared class count), the mistakes a researcher's data can make.
    """

    def __init__(
        self,
        n: int = 192,
        dim: int = 6,
        classes: int = 3,
        batch_size: int = 32,
        scale: float = 2.0,
        declare: bool = True,
        classes_attr: bool = False,
        labels: Literal["indices", "float", "shifted"] = "indices",
    ) -> None:
        super().__init__()
        self.n, self.dim, self.classes, self.batch_size = n, dim, classes, batch_size
        self.scale, self.classes_attr, self.labels = scale, classes_attr, labels
        if declare:
            self.num_classes = classes

    def setup(self, stage: str | None = None) -> None:
        gen = torch.Generator().manual_seed(0)
        centres = 3 * torch.randn(self.classes, self.dim, generator=gen)
        y = torch.randint(self.classes, (self.n,), generator=gen)
        x = centres[y] + torch.randn(self.n, self.dim, generator=gen)
        y = {"indices": y, "float": y.float(), "shifted": y + 2}[self.labels]
        half = self.n // 2
        self.train_set = TensorDataset(x[:half], y[:half])
        val = TensorDataset(x[half:], y[half:])
        if self.classes_attr:
            val.classes = [f"blob{i}" for i in range(self.classes)]
        self.val_set = Subset(val, range(len(val)))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=40)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        x, y = batch
        return x * self.scale, y


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


def feedback_used(monkeypatch, tmp_path, method, x: Tensor, y: Tensor, steps: int) -> list:
    """Trains ``steps`` steps on (x, y) and records every layer-wise feedback call of each.

    Returns:
        Per step, the list of ``(conv, W, B)`` the layers' backward was given (copies; conv:
            a convolution's options, None for a linear layer).
    """
    calls, apply = [], FeedbackGrad.apply

    def spy(x, weight, bias, feedback, conv):
        calls.append((conv, weight.detach().clone(), feedback.detach().clone()))
        return apply(x, weight, bias, feedback, conv)

    monkeypatch.setattr(FeedbackGrad, "apply", spy)
    loader = TensorBatches(x, y, batch_size=len(x))
    quiet_trainer(tmp_path, max_steps=steps).fit(
        method, train_dataloaders=loader, val_dataloaders=loader
    )
    per_step = len(calls) // steps
    return [calls[k * per_step : (k + 1) * per_step] for k in range(steps)]


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


def subprocess_env() -> dict[str, str]:
    """For ``python -m faeval`` in a subprocess: one thread like the tests' own process (for
    bit-exact comparisons), this checkout's faeval and tests first on the path."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


class KillAt(Callback):
    """Kills its own process with SIGKILL after training step ``step`` (a crash, mid-epoch).

    Callbacks run before the checkpoint callback, so the step's own checkpoint is not saved.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillWhileWriting(AtomicCheckpointIO):
    """Writes half of its ``save``-th checkpoint, then kills its process with SIGKILL."""

    def __init__(self, save: int) -> None:
        super().__init__()
        self.save, self.saves = save, 0

    def _write(self, checkpoint, fh) -> None:
        self.saves += 1
        if self.saves < self.save:
            return super()._write(checkpoint, fh)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class Throttle(Callback):
    """Sleeps after every training step: a slow run to interrupt from outside."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)


class SlowWrites(AtomicCheckpointIO):
    """Sleeps before every checkpoint it writes: with a checkpoint every step, a slow run to
    interrupt from outside (a plugin, which a stack of seeds accepts, unlike a callback)."""

    def __init__(self, seconds: float = 0.05) -> None:
        super().__init__()
        self.seconds = seconds

    def _write(self, checkpoint, fh) -> None:
        time.sleep(self.seconds)
        super()._write(checkpoint, fh)


class RankStates(Callback):
    """Saves every rank's final model state to ``folder/rank<R>.pt`` (DDP tests)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_fit_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.state_dict(), f"{self.folder}/rank{trainer.global_rank}.pt")


def trained_first_gradients(method, batches) -> dict:
    """Adam (the method's own optimizer) steps on ``batches``, as the training step takes them;
    the gradients of the first step."""
    optimizer = method.build_optimizer()
    first = None
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        method.step_objective(x, y)[0].backward()
        if first is None:
            first = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
        optimizer.step()
    return first
