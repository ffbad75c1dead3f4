"""The GPU check of stacked seeds: the CUDA path against the CPU result, then the benchmark.

Usage, on a machine with one CUDA GPU, from the repository root (about 6 minutes):
    PYTHONPATH=. python tools/gpu_stack.py [--out gpu_stack.json] [--budget 450]
    PYTHONPATH=. python tools/gpu_stack.py --device cpu --quick    # a dry run on the CPU

The lent machines' image has torch and Lightning but not jsonargparse (``faeval fit`` needs it):
carry its wheels (jsonargparse, docstring_parser, typeshed_client, pure Python) as the device
tool's README says, and install them first.

Parts, in this order; a part that would not fit in what is left of ``--budget`` seconds is
skipped and reported as skipped:

1. exactness: every stackable method × every backbone (tiny), K = 3 seeds: the gradients of
   one stacked step on the GPU against the same step on the CPU (each seed's lone run's to the
   bit there), TF32 off, within 1e-4 relative to each tensor's largest value (or a thousandth
   of the largest gradient, for a gradient that is 0 but for rounding); EP: 1e-2, its credit
   −ε/β carries rounding × 1/β and more through BatchNorm; PC, the TP family and PEPITA:
   5e-3, their credits are differences of nearly equal passes; and the losses of 3 Adam
   steps within the same;
2. no host sync: 20 steps of stacked DFA, BP and StateBridge through Lightning with
   ``torch.cuda.set_sync_debug_mode("error")`` on inside every training step;
3. seed-epochs per second at K = 1 and K = 16 (DFA, ResMLP d=256 L=4, 50,000 CIFAR-shaped
   samples on the GPU, batch 128, epochs 2-3 timed; target: K = 16 ≥ 8× K = 1);
4. one 100-epoch BP run, ``faeval fit --config configs/resmlp_d256_l4_bp.yaml --seeds 0`` on a
   fake CIFAR-10 folder of 50,000 images, diagnostics every epoch (target < 60 s);
5. 10 seeds × 100 epochs of DFA, ``--config configs/resmlp_d256_l4_dfa.yaml --seeds 0-9``
   (target < 180 s);
6. the compile option's gain: part 3 again with ``compile=True`` (compile time apart).

Prints one line per result and writes them all to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, Trainer

import faeval.methods
import faeval.stacked.modules as stacked_modules
from faeval.backbones import MLP, ResMLP, SmallCNN, StudentNet, ViTMini
from faeval.cli.lightning import known_names
from faeval.data import InMemoryDataModule
from faeval.methods import LayerFeedbackMethod
from faeval.stacked import stack_methods
from faeval.stacked.data import StackedData
from faeval.stacked.module import SeedStack

K = 3
#: Options that keep a method's check small; a stacking method not named here takes its defaults.
OPTIONS = {
    "StateBridge": {"bridge_width": 32},
    "CreditBridge": {"value_width": 32, "warmup_epochs": 0},
    "EP": {"steps": 8, "tol": 0.0},  # no stop: a stop one step apart is no rounding error
    "PC": {"steps": 8},
    **{name: {"feedback_width": 32} for name in ("TP", "DTP", "DRL", "LDRL")},
}
#: Every method whose class declares that it stacks (``CreditMethod.stack_refusal`` is None).
METHODS = {
    name: (getattr(faeval.methods, name), OPTIONS.get(name, {}))
    for name in known_names()["model"]
    if getattr(faeval.methods, name).stack_refusal is None
}
#: What rounding may reach: EP's credit −ε/β carries the relaxed states' rounding times
#: 1/β = 10, and through BatchNorm's batch statistics the relaxation amplifies it further
#: (2.8e-3 on SmallCNN between the one-kernel and per-seed forms, both on the CPU).
#: The credits that are differences of two nearly equal passes (DTP-like G(ĥ) − G(h),
#: PEPITA's two passes, PC's prediction errors) amplify rounding likewise: the CPU's per-seed
#: and one-kernel forms differ by up to 1.2e-3 (``--device cpu --quick``), and a lone run in
#: float32 differs from float64 by as much (PEPITA on SmallCNN: 4e-4).
TOLERANCE = {"EP": 1e-2, **dict.fromkeys(("PC", "TP", "DTP", "DRL", "LDRL", "PEPITA"), 5e-3)}
BACKBONES = {
    "ResMLP": ((3, 16, 16), functools.partial(ResMLP, d_hidden=64, num_blocks=2)),
    "SmallCNN": ((3, 16, 16), functools.partial(SmallCNN, width=8, num_blocks=2)),
    "ViTMini": ((3, 16, 16), functools.partial(ViTMini, d_model=32, num_blocks=2, num_heads=2)),
    "StudentNet": ((24,), functools.partial(StudentNet, width=64, depth=3)),
    "MLP": ((24,), functools.partial(MLP, width=64, num_blocks=2)),
}
RESULTS: dict[str, object] = {}
PER_SEED_KERNELS = stacked_modules.per_seed_kernels


def report(name: str, value, note: str = "") -> None:
    RESULTS[name] = value
    print(f"[gpu] {name}: {value}{'  ' + note if note else ''}", flush=True)


def rel(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """max |a − b| / max(max |b|, ``floor``) (the absolute difference when both are 0)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = max(b.abs().max().item(), floor)
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


def build(method: str, backbone: str, seed: int):
    cls, kwargs = METHODS[method]
    shape, factory = BACKBONES[backbone]
    torch.manual_seed(seed)
    return cls(shape, 10, backbone=factory, **kwargs).train()


def feedback_of(method) -> contextlib.AbstractContextManager:
    """A layer-wise method's feedback attached (its ``training_step`` does), else nothing."""
    return (
        method.attached() if isinstance(method, LayerFeedbackMethod) else contextlib.nullcontext()
    )


def exactness(device: str) -> None:
    """Part 1: the stacked step on ``device`` against the CPU's, per method and backbone."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    worst: dict[str, float] = {}
    failed = []
    for method in METHODS:
        for backbone, (shape, _) in BACKBONES.items():
            gen = torch.Generator().manual_seed(1)
            batches = [
                (torch.randn(K * 16, *shape, generator=gen), torch.randint(0, 10, (K * 16,)))
                for _ in range(3)
            ]
            runs = {}
            for i, dev in enumerate(("cpu", device)):
                if i and dev == "cpu":  # a dry run: the accelerator's one-kernel forms, on the CPU
                    stacked_modules.per_seed_kernels = lambda x: False
                stacked = stack_methods([build(method, backbone, s) for s in range(K)]).to(dev)
                opt = torch.optim.Adam(stacked.parameters(), lr=1e-3, fused=True)
                losses, grads = [], None
                for x, y in batches:
                    opt.zero_grad(set_to_none=True)
                    with feedback_of(stacked):  # the step's backward, as training_step's
                        objective, per_sample = stacked.step_objective(x.to(dev), y.to(dev))
                        objective.backward()
                    if grads is None:
                        grads = {n: p.grad.clone() for n, p in stacked.named_parameters()
                                 if p.grad is not None}  # fmt: skip
                    opt.step()
                    losses.append(per_sample.detach())
                runs[i] = (grads, torch.stack(losses))
                stacked_modules.per_seed_kernels = PER_SEED_KERNELS
            (g_cpu, l_cpu), (g_dev, l_dev) = runs[0], runs[1]
            # A gradient that is 0 in exact arithmetic (a bias whose effect cancels, as in
            # LDRL's feedback loss) holds rounding noise in both forms: it is measured against
            # a thousandth of the largest gradient, not against its own noise.
            floor = 1e-3 * max(g.abs().max().item() for g in g_cpu.values())
            grad_err = max(rel(g_dev[n], g, floor) for n, g in g_cpu.items())
            loss_err = rel(l_dev, l_cpu)
            worst[method] = max(worst.get(method, 0.0), grad_err, loss_err)
            if max(grad_err, loss_err) > TOLERANCE.get(method, 1e-4):
                failed.append(f"{method}/{backbone} grad {grad_err:.1e} loss {loss_err:.1e}")
    worst = {m: float(f"{v:.2e}") for m, v in worst.items()}
    report("exactness_worst_rel_by_method", worst, f"targets: 1e-4, else {TOLERANCE}")
    report("exactness_failed", failed)


class RandomCIFAR(InMemoryDataModule):
    """N random uint8 images of CIFAR's shape, normalised like CIFAR-10."""

    input_shape, num_classes = (3, 32, 32), 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def __init__(self, n: int, seed: int) -> None:
        super().__init__(batch_size=128, probe_size=64, seed=seed)
        self.n = n

    def load(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (self.n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        xt = torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8, generator=gen)
        return {
            "train": (x, torch.randint(0, 10, (self.n,), generator=gen)),
            "test": (xt, torch.randint(0, 10, (1024,), generator=gen)),
        }


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.seconds.append(time.perf_counter() - self.start)


class SyncGuard(Callback):
    """Turns CUDA's sync debugging to "error" inside every training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.cuda.set_sync_debug_mode(0)


def stacked_fit(method, k, n, epochs, device, *, compile=False, callbacks=(), batches=None):
    """Trains K seeds stacked on ``device`` through Lightning; returns the epoch timer."""
    cls = getattr(faeval.methods, method)
    methods = []
    for seed in range(k):
        torch.manual_seed(seed)
        methods.append(cls((3, 32, 32), 10))
    data = StackedData([RandomCIFAR(n, seed) for seed in range(k)])
    timer = EpochTimer()
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_epochs=epochs,
        limit_val_batches=0,
        limit_train_batches=batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer, *callbacks],
    )
    trainer.fit(SeedStack(methods, compile=compile), datamodule=data)
    return timer


def no_sync(device: str) -> None:
    """Part 2: no host synchronisation inside a training step."""
    if device != "cuda":
        report("no_sync", "skipped (needs CUDA)")
        return
    for method in ("DFA", "BP", "StateBridge"):
        try:
            stacked_fit(method, 4, 4096, 1, device, callbacks=[SyncGuard()], batches=20)
            report(f"no_sync_{method}", "ok")
        except RuntimeError as err:
            torch.cuda.set_sync_debug_mode(0)
            report(f"no_sync_{method}", f"FAILED: {str(err).splitlines()[0][:300]}")


def throughput(device: str, n: int, ks: list[int], compile: bool) -> None:
    """Parts 3 and 6: seed-epochs per second of stacked DFA, epochs 2-3 timed."""
    tag = "compiled" if compile else "eager"
    rates = {}
    for k in ks:
        start = time.perf_counter()
        timer = stacked_fit("DFA", k, n, 3, device, compile=compile)
        rates[k] = k * 2 / sum(timer.seconds[1:])
        total = time.perf_counter() - start
        note = f"first epoch {timer.seconds[0]:.1f} s, all {total:.1f} s"
        report(f"seed_epochs_per_s_{tag}_K{k}", round(rates[k], 3), note)
    if len(ks) > 1:
        gain = round(rates[ks[-1]] / rates[ks[0]], 2)
        note = "target >= 8 on an H100" if not compile else ""
        report(f"stacking_gain_{tag}_K{ks[-1]}_over_K{ks[0]}", gain, note)
    RESULTS.setdefault("_rates", {})[tag] = rates


def write_fake_cifar(root: Path, n_train: int, n_test: int = 10000) -> Path:
    """A format-faithful cifar-10-batches-py folder of random images (as tests/conftest.py)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def dump(name: str, n: int) -> None:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, n).tolist()}, fh, protocol=2)

    for i in range(1, 6):
        dump(f"data_batch_{i}", n_train // 5)
    dump("test_batch", n_test)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh, protocol=2)
    return root


def cli_run(name, config, seeds, epochs, data_dir, root, timeout, extra=()) -> None:
    """Parts 4 and 5: ``faeval fit`` as a user runs it, timed from outside."""
    cmd = [sys.executable, "-m", "faeval", "fit", "--config", config, "--seeds", seeds,
           "--data.data_dir", str(data_dir), "--trainer.max_epochs", str(epochs),
           "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false",
           "--diagnostics.verbose", "false", *extra]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        report(name, f"over {timeout} s (stopped)")
        return
    seconds = time.perf_counter() - start
    if done.returncode:
        report(name, f"FAILED rc {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        return
    report(name, round(seconds, 1), "seconds, process start and data loading included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=450, help="seconds for every part")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_stack.json"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of each part")
    args = parser.parse_args()
    start = time.perf_counter()
    n, epochs, ks = (2048, 2, [1, 4]) if args.quick else (50000, 100, [1, 16])
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    report("device", torch.cuda.get_device_name() if args.device == "cuda" else args.device)
    report("torch", torch.__version__)
    parts = [
        ("exactness", 60, lambda: exactness(args.device)),
        ("no_sync", 30, lambda: no_sync(args.device)),
        ("throughput", 40, lambda: throughput(args.device, n, ks, compile=False)),
    ]
    data_dir = write_fake_cifar(Path("/tmp/faeval_gpu_cifar"), n)
    root = Path("/tmp/faeval_gpu_runs")
    bp, dfa = "configs/resmlp_d256_l4_bp.yaml", "configs/resmlp_d256_l4_dfa.yaml"

    def bp_run() -> None:
        cli_run("bp_100_epochs_seconds", bp, "0", epochs, data_dir, root / "bp", min(left(), 120))

    def dfa_runs() -> None:
        name, timeout = "dfa_10_seeds_100_epochs_seconds", min(left(), 240)
        cli_run(name, dfa, "0-9", epochs, data_dir, root / "dfa", timeout)

    parts += [
        ("bp_100_epochs", 90, bp_run),
        ("dfa_10x100_epochs", 200, dfa_runs),
        ("compile", 100, lambda: throughput(args.device, n, ks, compile=True)),
    ]
    for name, needs, part in parts:
        if left() < needs:
            report(name, f"skipped: {left():.0f} s left of the budget, it needs about {needs}")
            continue
        t = time.perf_counter()
        try:
            part()
        except Exception as err:  # one broken part must not hide the others' results
            report(name, f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
        report(f"{name}_seconds", round(time.perf_counter() - t, 1))
    rates = RESULTS.pop("_rates", {})
    if "compiled" in rates and "eager" in rates:
        for k in ks:
            report(f"compile_gain_K{k}", round(rates["compiled"][k] / rates["eager"][k], 2))
    report("total_seconds", round(time.perf_counter() - start, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    main()
