"""Per-epoch training cost of each method relative to BP, on one backbone and one data set.

Usage:
    python tools/bench_methods.py                          # ResMLP d=256 L=4, CPU, 5 reps
    python tools/bench_methods.py --ks 0 5 10 20 50 --reps 7 --threads 2
    python tools/bench_methods.py --accelerator gpu --n_train 16384 --batch_size 256
    python tools/bench_methods.py --methods PC --reps 7       # PC against BP only
    python tools/bench_methods.py --methods PC --clock cpu    # CPU seconds, a shared machine

The data are CIFAR-shaped random tensors (3×32×32, 10 classes, in memory): the cost of a
step does not depend on what the pixels say. Every method trains the same ResMLP from the
same seed through Lightning's loop (no diagnostics, no validation), for one untimed warm-up
epoch and one timed epoch. The machine may be shared and noisy, so the methods are measured
interleaved: every rep runs each method once, in an order rotated rep by rep, and the ratio
to BP is taken within each rep before the median over reps. EP runs with ``tol=0`` so that
it takes exactly K relaxation steps; CreditBridge runs with ``warmup_epochs=0`` (its warmup
costs what DFA plus the value nets' training cost).

``--methods`` restricts the table to the methods named (BP, the reference, always runs; EP's
rows run only when EP is named). Prints one row per method: median seconds per epoch, median
ratio to BP, and the ratio's range over reps.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from typing_extensions import override

import faeval.methods
from faeval.backbones import ResMLP
from faeval.cli import known_names
from faeval.data import TensorBatches
from faeval.methods import EP, CreditMethod


class EpochTimer(Callback):
    """Seconds of each training epoch (device work included) by ``clock``: wall-clock
    (``time.perf_counter``) or this process's CPU time (``time.process_time``)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds: list[float] = []
        self.clock = clock
        self._start = 0.0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    @override
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self._start = self.clock()

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._sync(pl_module)
        self.seconds.append(self.clock() - self._start)


#: Options a method is benchmarked with beyond its defaults (helper nets as wide as the
#: backbone; CreditBridge past its DFA warmup). EP is benchmarked per relaxation length below.
OPTIONS = {
    "StateBridge": lambda args: {"bridge_width": args.d_hidden},
    "CreditBridge": lambda args: {"value_width": args.d_hidden, "warmup_epochs": 0},
}
SKIP = {"EP", "FrozenBlocks"}  # EP per K below; FrozenBlocks costs less than BP's step


def candidates(args) -> dict[str, Callable[[], CreditMethod]]:
    """Name -> builder of every method the command line knows, BP first."""
    shape, classes = (3, 32, 32), 10
    backbone = functools.partial(ResMLP, d_hidden=args.d_hidden, num_blocks=args.num_blocks)
    common = dict(input_shape=shape, num_classes=classes, backbone=backbone)
    names = sorted(set(known_names()["model"]) - SKIP, key=lambda n: (n != "BP", n))
    if args.methods:
        names = [n for n in names if n == "BP" or n in args.methods]
    out: dict[str, Callable[[], CreditMethod]] = {
        name: functools.partial(
            getattr(faeval.methods, name), **common, **OPTIONS.get(name, lambda _: {})(args)
        )
        for name in names
    }
    if args.methods and "EP" not in args.methods:
        return out
    for k in args.ks:
        out[f"EP K={k}"] = functools.partial(EP, **common, steps=k, tol=0.0)
    if args.symmetric_k is not None:
        out[f"EP K={args.symmetric_k} ±β"] = functools.partial(
            EP, **common, steps=args.symmetric_k, tol=0.0, symmetric=True
        )
    return out


def epoch_seconds(build: Callable[[], CreditMethod], loader: TensorBatches, args) -> float:
    """Seconds of the second of two training epochs of a freshly built method."""
    seed_everything(0, verbose=False)
    method = build()
    timer = EpochTimer(time.process_time if args.clock == "cpu" else time.perf_counter)
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        default_root_dir=args.root,
    )
    trainer.fit(method, train_dataloaders=loader)
    return timer.seconds[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d_hidden", type=int, default=256)
    parser.add_argument("--num_blocks", type=int, default=4)
    parser.add_argument("--n_train", type=int, default=4096, help="samples per epoch")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument(
        "--ks",
        type=int,
        nargs="*",
        default=[0, 5, 10, 20, 50],
        help="EP relaxation steps K to benchmark",
    )
    parser.add_argument(
        "--symmetric_k",
        type=int,
        default=20,
        help="also benchmark symmetric EP with this K (negative: skip)",
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=[],
        help="benchmark only these methods against BP (EP: its --ks and --symmetric_k rows)",
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU seconds (on a shared machine, with --threads 1)",
    )
    parser.add_argument("--root", default="/tmp/faeval_bench", help="Lightning's root dir")
    args = parser.parse_args(argv)
    known = set(known_names()["model"]) - (SKIP - {"EP"})
    unknown = sorted(set(args.methods) - known)
    if unknown:
        parser.exit(
            2,
            f"bench_methods: unknown method(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}\n",
        )
    if args.symmetric_k is not None and args.symmetric_k < 0:
        args.symmetric_k = None
    torch.set_num_threads(args.threads)
    # Training without validation is the point here; lightning 2.6's _pytree calls an API
    # that torch 2.14 deprecates. Neither is news to the reader of a timing table.
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n_train, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.n_train,), generator=gen)
    loader = TensorBatches(x, y, args.batch_size, shuffle=True)
    builders = candidates(args)
    names = list(builders)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            seconds[name].append(epoch_seconds(builders[name], loader, args))
        print(
            f"rep {rep + 1}/{args.reps}: " + "  ".join(f"{n} {seconds[n][-1]:.3f}s" for n in names),
            flush=True,
        )

    steps = -(-args.n_train // args.batch_size)
    print(
        f"\nResMLP d={args.d_hidden} L={args.num_blocks}, {args.n_train} samples of 3×32×32 "
        f"per epoch, batch {args.batch_size} ({steps} steps), {args.accelerator}, "
        f"{args.threads} thread(s), {args.reps} interleaved reps, {args.clock} clock"
    )
    print("| method | s/epoch (median) | × BP (median) | × BP (range) |")
    print("|---|---|---|---|")
    for name in names:
        ratios = [s / b for s, b in zip(seconds[name], seconds["BP"], strict=True)]
        print(
            f"| {name} | {statistics.median(seconds[name]):.3f} | "
            f"{statistics.median(ratios):.2f} | {min(ratios):.2f}–{max(ratios):.2f} |"
        )


if __name__ == "__main__":
    main()
