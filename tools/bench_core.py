"""Benchmark: faeval's Trainer epoch against plain PyTorch loops, and the diagnostics' cost.

Usage:
    python tools/bench_core.py [--reps 3] [--n 50000] [--threads 0]

One epoch of BP and of DFA on ResMLP (d=256, L=4) over N CIFAR-shaped uint8 samples in
memory, batch 128, on the CPU. Every configuration runs once per rep, interleaved, and the
ratios are taken rep by rep (bursts on a shared machine slow single epochs 2-9x), then the
median is printed:

- faeval: ``Trainer.fit`` of the method for one epoch (no validation, no diagnostics);
- fastest: the fastest plain loop for the same update: index slicing of the in-memory
  tensor, ``Adam(fused=True)``, normalisation per batch;
- research: the loop research code usually has: ``DataLoader(TensorDataset)``, default
  Adam;
- barebones: the same ``Trainer.fit`` with ``barebones=True`` (Lightning without logging,
  callbacks or checks, timed around ``fit``): Lightning's own floor for this loop;
- diag: one diagnostics pass (1024 probe samples) as a fraction of faeval's epoch.

Targets: faeval / fastest <= 1.05, faeval / research <= 0.75, diag / epoch <= 1%.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from faeval.data import InMemoryDataModule
from faeval.diagnostics import measure_layers as measure
from faeval.methods import BP, DFA
from faeval.methods.base import local_objective
from faeval.methods.common import output_error


class RandomCIFAR(InMemoryDataModule):
    """N random uint8 images of CIFAR's shape, normalised like CIFAR-10."""

    input_shape = (3, 32, 32)
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(self, n: int) -> None:
        super().__init__(batch_size=128, probe_size=1024, seed=0)
        self.n = n

    def load(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (self.n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 10, (self.n,), generator=gen)
        xt = torch.randint(0, 256, (2048, 3, 32, 32), dtype=torch.uint8, generator=gen)
        return {"train": (x, y), "test": (xt, torch.randint(0, 10, (2048,), generator=gen))}


class EpochTimer(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def faeval_epoch(cls, dm: RandomCIFAR) -> tuple[float, float]:
    """Seconds of one faeval epoch, and of one diagnostics pass after it."""
    torch.manual_seed(0)
    model = cls(dm.input_shape, dm.num_classes)
    timer = EpochTimer()
    trainer = Trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    x, y = dm.probe()
    start = time.perf_counter()
    measure(model, x, y)
    return timer.seconds, time.perf_counter() - start


def barebones_epoch(cls, dm: RandomCIFAR) -> float:
    """Seconds of ``Trainer(barebones=True).fit`` for one epoch (setup included)."""
    torch.manual_seed(0)
    model = cls(dm.input_shape, dm.num_classes)
    trainer = Trainer(
        max_epochs=1,
        limit_val_batches=0,
        barebones=True,
        accelerator="cpu",
        num_sanity_val_steps=0,
        logger=False,
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start


def plain_epoch(cls, dm: RandomCIFAR, research: bool) -> float:
    """Seconds of one epoch of the same update written as a plain loop."""
    torch.manual_seed(0)
    model = cls(dm.input_shape, dm.num_classes)  # only for its backbone and feedback
    bb = model.backbone
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (
        torch.optim.Adam(params, lr=1e-3)
        if research
        else torch.optim.Adam(params, lr=1e-3, fused=True)
    )
    x_all, y_all = dm.splits["train"]
    start = time.perf_counter()
    if research:
        batches = DataLoader(TensorDataset(x_all, y_all), batch_size=128, shuffle=True)
    else:
        order = torch.randperm(len(x_all))
        batches = ((x_all[idx], y_all[idx]) for idx in order.split(128))
    for x, y in batches:
        x = dm.normalize(x)
        opt.zero_grad(set_to_none=True)
        if cls is BP:
            loss = F.cross_entropy(bb(x), y)
        else:
            trace = bb.trace(x, detach=True)
            loss = F.cross_entropy(trace.logits, y)
            e = output_error(trace.logits, y)
            credits = [(e @ model.feedback[l]).view_as(h) for l, h in enumerate(trace.states)]
            loss = loss + local_objective(trace, credits)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = RandomCIFAR(args.n)
    dm.setup()
    times: dict[str, list[float]] = {}
    for rep in range(args.reps):
        for cls in (BP, DFA):
            name = cls.__name__
            epoch, diag = faeval_epoch(cls, dm)
            times.setdefault(f"{name} faeval", []).append(epoch)
            times.setdefault(f"{name} diag", []).append(diag)
            times.setdefault(f"{name} fastest", []).append(plain_epoch(cls, dm, research=False))
            times.setdefault(f"{name} research", []).append(plain_epoch(cls, dm, research=True))
            times.setdefault(f"{name} barebones", []).append(barebones_epoch(cls, dm))
        print(
            f"rep {rep + 1}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            flush=True,
        )
    print(f"\nthreads {torch.get_num_threads()}, N = {args.n}, batch 128, ResMLP d=256 L=4")
    print(f"{'configuration':<16}{'median s':>10}")
    for key, values in times.items():
        print(f"{key:<16}{statistics.median(values):>10.3f}")
    print(f"\n{'ratio (median over reps)':<34}{'BP':>8}{'DFA':>8}  target")
    for label, num, den, target in (
        ("faeval / fastest plain loop", "faeval", "fastest", "<= 1.05"),
        ("faeval / research loop", "faeval", "research", "<= 0.75"),
        ("Lightning barebones / fastest", "barebones", "fastest", "(floor)"),
        ("diagnostics pass / epoch", "diag", "faeval", "<= 0.01"),
    ):
        cells = []
        for name in ("BP", "DFA"):
            ratios = [
                a / b for a, b in zip(times[f"{name} {num}"], times[f"{name} {den}"], strict=True)
            ]
            cells.append(f"{statistics.median(ratios):8.3f}")
        print(f"{label:<34}{''.join(cells)}  {target}")


if __name__ == "__main__":
    main()
