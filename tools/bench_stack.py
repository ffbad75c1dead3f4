"""Benchmark: seeds stacked in one process against one process per seed, in seed-epochs/s.

Usage:
    python tools/bench_stack.py [--reps 3] [--n 50000] [--ks 1 2 4 8 16] [--batches 60]
    python tools/bench_stack.py --compile_ks 1 8          # the compile option's gain too
    python tools/bench_stack.py --methods DFA PC --ks 4   # each method's cost against BP's
    python tools/bench_stack.py --ks --sweep_ks 2 3 4 8 16 32   # the sweep's layout per K

The methods (``--methods``, DFA by default; BP always runs as the reference) on ResMLP d=256
L=4 over N CIFAR-shaped uint8 samples in memory, batch 128, on the CPU, trained through
Lightning as ``faeval fit`` trains (no validation, diagnostics, logger or checkpoints), each
with its defaults (PC: T = 20) but CreditBridge past its DFA warmup and the bridges as wide
as the backbone, as tools/bench_methods.py runs them. Each configuration runs in worker
processes of its own, started together: each builds its data and methods, trains ``--warmup``
batches (compilation, caches), then waits; once all are ready they train ``--batches``
batches on a common signal, and the throughput is the seeds' share of an epoch they covered
over the slowest worker's seconds.
Configurations:

- ``alone PxT``: one ordinary single-seed run per process, P processes of T threads (the
  layouts a sweep without stacking can take: 1×cores and cores×1);
- ``stack K``: one process of ``cores`` threads training K seeds stacked;
- ``1x1 stack K``: one single-thread process training K seeds stacked (against ``alone 1x1``);
- ``Px1 stack K/P``: ``cores`` single-thread processes, each K/P seeds stacked;
- ``1x1 stack K compiled``: ``1x1 stack K`` with the compiled step (``--stack.compile``);
- ``sweep K=…`` (``--sweep_ks``): the layout ``faeval sweep`` takes for K seeds of one method
  on this CPU (``faeval.study.layout.layout``: its processes, threads and stacks, cut as its
  ``chunks`` cuts them and run ``processes`` at a time, wave after wave). Its throughput is
  K seeds over the waves' summed seconds, against the best ``alone`` layout's rate with every
  core busy: a conservative comparison where K seeds alone would leave a core idle.

The machine may be shared: every rep runs each method's configurations once, in an order
rotated rep by rep, and each throughput is divided by the best ``alone`` layout's throughput of
the same method and rep before the median over reps is taken. Each method's cost against BP
in the same layout and rep (× BP: BP's seed-epochs/s over the method's, what a seed-epoch
costs in BP's) is printed per layout, stacked and alone, as the median over reps. A method
that does not stack runs alone only. The load average is printed with each rep. Seed-epochs
per CPU-second (the workers' own processor time) are printed too: for single-thread workers
they measure the work per core, which other processes' load does not change much.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WORKER_FLAG = "--worker"
#: Options beyond a method's defaults, as tools/bench_methods.py benchmarks it (helper nets as
#: wide as the backbone; CreditBridge past its DFA warmup).
OPTIONS = {
    "StateBridge": {"bridge_width": 256},
    "CreditBridge": {"value_width": 256, "warmup_epochs": 0},
}


def worker(args: argparse.Namespace) -> None:
    """One process of one configuration: set up, report ready, train on "go", print seconds."""
    import torch
    from lightning.pytorch import Callback, Trainer

    import faeval.methods
    from faeval.data import InMemoryDataModule
    from faeval.stacked import stack_methods  # noqa: F401  (import cost outside the timing)
    from faeval.stacked.data import StackedData
    from faeval.stacked.module import SeedStack

    torch.set_num_threads(args.threads)

    class RandomCIFAR(InMemoryDataModule):
        input_shape, num_classes = (3, 32, 32), 10
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

        def load(self):
            gen = torch.Generator().manual_seed(0)
            x = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=gen)
            xt = torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8, generator=gen)
            y, yt = torch.randint(0, 10, (args.n,)), torch.randint(0, 10, (1024,))
            return {"train": (x, y), "test": (xt, yt)}

    class Gate(Callback):
        """Times ``batches`` batches after ``warmup`` ones, waiting for "go" in between."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == args.warmup:
                print("ready", flush=True)
                sys.stdin.readline()
                self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == args.warmup + args.batches - 1:
                wall, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
                print(f"seconds {wall:.6f} {cpu:.6f}", flush=True)

    cls = getattr(faeval.methods, args.method)
    seeds = [args.seed0 + k for k in range(args.k)]
    methods, datamodules = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        methods.append(cls((3, 32, 32), 10, **OPTIONS.get(args.method, {})))
        datamodules.append(RandomCIFAR(batch_size=128, probe_size=16, seed=seed))
    if args.mode == "alone":
        module, data = methods[0], datamodules[0]
    else:
        module, data = SeedStack(methods, compile=args.compile), StackedData(datamodules)
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=args.warmup + args.batches,
        limit_val_batches=0,
        logger=False,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Gate()],
    )
    trainer.fit(module, datamodule=data)


def launch(args, method: str, config: Layout) -> tuple[float, float]:
    """Runs one configuration of one method, wave after wave; returns seed-epochs per second
    (over the waves' wall seconds, and over the workers' CPU seconds)."""
    wall = cpu = 0.0
    seeds = 0
    for wave in config.waves:
        seconds = run_wave(args, method, config, wave)
        wall += max(s for s, _ in seconds)
        cpu += sum(c for _, c in seconds)
        seeds += sum(wave)
    epochs = args.batches * 128 / args.n  # the share of an epoch each seed covered
    return seeds * epochs / wall, seeds * epochs / cpu


def run_wave(args, method: str, config: Layout, wave: list[int]) -> list[tuple[float, float]]:
    """One process per entry of ``wave`` (its seeds), started together; their (wall, CPU)
    seconds for the timed batches."""
    threads = config.threads
    cmd = [sys.executable, __file__, WORKER_FLAG, "--mode", config.mode, "--n", str(args.n)]
    cmd += ["--batches", str(args.batches), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(threads), "--method", method]
    cmd += ["--compile"] if config.compiled else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    firsts = [sum(wave[:p]) for p in range(len(wave))]  # each process's first seed
    procs = [
        subprocess.Popen(
            [*cmd, "--k", str(k), "--seed0", str(first)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        for k, first in zip(wave, firsts, strict=True)
    ]
    for proc in procs:  # every worker set up and warmed up
        while (line := proc.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            raise RuntimeError(f"a worker of {method} {config.name} died before it was ready")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    seconds = []
    for proc in procs:
        out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("seconds"):
                seconds.append((float(line.split()[1]), float(line.split()[2])))
    if len(seconds) != len(wave):
        raise RuntimeError(f"{method} {config.name}: a worker did not report its time")
    return seconds


@dataclass(frozen=True)
class Layout:
    """One configuration: ``waves`` of processes run one wave after the other, each process
    training the seeds its entry says (alone: 1), with ``threads`` threads."""

    name: str
    mode: str  # "alone" or "stack"
    waves: list[list[int]]
    threads: int
    compiled: bool = False

    @property
    def seeds(self) -> int:
        """The seeds it trains."""
        return sum(map(sum, self.waves))

    def share(self, k: int) -> float:
        """The share of its measured rate an unstacked layout keeps on K seeds: its P processes
        take ceil(K/P) rounds, the last one with idle cores where P does not divide K."""
        processes = len(self.waves[0])
        return k / (processes * -(-k // processes))


def sweep_layout(k: int, cores: int) -> Layout:
    """The layout ``faeval sweep`` takes for K seeds of one method on this CPU
    (``faeval.study.layout``): its processes and stack size, the stacks cut as its ``chunks``
    cuts them, run ``processes`` at a time."""
    from faeval.study.layout import layout

    processes, threads, stack = layout(groups=1, seeds=k, cores=cores, gpus=0)
    n = -(-k // stack)  # stacks, as even as can be (faeval.study.layout.chunks)
    sizes = [len(range(i, k, n)) for i in range(n)]
    waves = [sizes[i : i + processes] for i in range(0, n, processes)]
    mode = "stack" if stack > 1 else "alone"
    return Layout(f"sweep K={k} ({'+'.join(map(str, sizes))})", mode, waves, threads)


def configurations(args) -> list[Layout]:
    """Every layout the benchmark runs (the module's docstring lists them)."""
    cores = args.cores
    configs = [Layout(f"alone 1x{cores}", "alone", [[1]], cores)]
    if cores > 1:
        configs.append(Layout(f"alone {cores}x1", "alone", [[1] * cores], 1))
    configs += [Layout(f"stack {k}", "stack", [[k]], cores) for k in args.ks]
    if cores > 1:
        configs.append(Layout("alone 1x1", "alone", [[1]], 1))
        configs += [Layout(f"1x1 stack {k}", "stack", [[k]], 1) for k in args.ks]
    configs += [
        Layout(f"{cores}x1 stack {k // cores}", "stack", [[k // cores] * cores], 1)
        for k in args.ks
        if cores > 1 and k >= cores and k % cores == 0
    ]
    configs += [sweep_layout(k, cores) for k in args.sweep_ks]
    configs += [Layout(f"1x1 stack {k} compiled", "stack", [[k]], 1, True) for k in args.compile_ks]
    if args.only:
        configs = [c for c in configs if c.name in args.only]
    return configs


def span(values: list[float]) -> str:
    return f"[{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=50000, help="training samples")
    parser.add_argument("--ks", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    parser.add_argument("--compile_ks", type=int, nargs="*", default=[])
    parser.add_argument(
        "--sweep_ks", type=int, nargs="*", default=[], help="the sweep's own layout at these K"
    )
    parser.add_argument("--batches", type=int, default=60, help="timed batches per worker")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument(
        "--methods", nargs="+", default=["DFA"], help="methods to time against BP (always run)"
    )
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", nargs="*", default=[], help="run only these configurations")
    parser.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="DFA", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="stack", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seed0", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import faeval.methods
    from faeval.cli import known_names

    known = known_names()["model"]
    unknown = sorted(set(args.methods) - set(known))
    if unknown:
        names = ", ".join(unknown)
        parser.exit(2, f"bench_stack: unknown method(s) {names}; known: {', '.join(known)}\n")
    methods = ["BP", *dict.fromkeys(m for m in args.methods if m != "BP")]
    configs = configurations(args)
    runs = [  # (method, configuration): a method that does not stack runs alone only
        (method, config)
        for method in methods
        for config in configs
        if config.mode == "alone" or getattr(faeval.methods, method).stack_refusal is None
    ]
    keys = [(method, config.name) for method, config in runs]
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    ratios: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    per_cpu: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    costs: dict[tuple[str, str], list[float]] = {key: [] for key in keys}  # × BP
    cpu_costs: dict[tuple[str, str], list[float]] = {key: [] for key in keys}  # × BP, CPU-s
    # The sweep's layout at K against the best unstacked layout running the same K seeds.
    sweeps = {c.name: c.seeds for c in configs if c.name.startswith("sweep")}
    same_k: dict[tuple[str, str], list[float]] = {key: [] for key in keys if key[1] in sweeps}
    for rep in range(args.reps):
        loadavg = Path("/proc/loadavg")
        load = loadavg.read_text().split()[:3] if loadavg.exists() else []
        order = runs[rep % len(runs) :] + runs[: rep % len(runs)]
        got = {(method, config.name): launch(args, method, config) for method, config in order}
        for method in methods:
            alone = [v for (m, n), (v, _) in got.items() if m == method and n.startswith("alone")]
            best_alone = max(alone, default=float("nan"))
            for (m, name), (value, value_cpu) in got.items():
                if m == method:
                    rates[m, name].append(value)
                    ratios[m, name].append(value / best_alone)
                    if name in sweeps:
                        best = max(
                            got[method, c.name][0] * c.share(sweeps[name])
                            for c in configs
                            if c.mode == "alone"
                        )
                        same_k[m, name].append(value / best)
                    per_cpu[m, name].append(value_cpu)
                    costs[m, name].append(got["BP", name][0] / value)
                    cpu_costs[m, name].append(got["BP", name][1] / value_cpu)
        print(
            f"rep {rep + 1} (load average {' '.join(load)}): "
            + "  ".join(f"{m} {name} {v:.3f} ({c:.3f}/cpu-s)" for (m, name), (v, c) in got.items()),
            flush=True,
        )
    print(
        f"\nResMLP d=256 L=4, N = {args.n}, batch 128, {args.cores} cores, "
        f"{args.batches} timed batches per worker, {args.reps} reps"
    )
    print(
        f"{'method':<14}{'configuration':<22}{'seed-epochs/s':>14}{'/ best alone':>14}"
        f"{'range':>14}{'per CPU-second':>16}{'× BP':>8}{'range':>14}{'× BP per CPU-s':>16}"
    )
    for key in keys:
        r, c = ratios[key], costs[key]
        print(
            f"{key[0]:<14}{key[1]:<22}{statistics.median(rates[key]):>14.3f}"
            f"{statistics.median(r):>14.2f}{span(r):>14}{statistics.median(per_cpu[key]):>16.3f}"
            f"{statistics.median(c):>8.2f}{span(c):>14}{statistics.median(cpu_costs[key]):>16.2f}"
        )
    if same_k:
        print(
            "\nThe sweep's layout at K against the best unstacked layout running the same K "
            "seeds (its processes in rounds: K seeds in ceil(K/P) rounds of P):"
        )
        for (method, name), values in same_k.items():
            print(f"{method:<14}{name:<22}{statistics.median(values):>8.2f}{span(values):>14}")
    for method in methods:
        for k in args.compile_ks:
            compiled = per_cpu.get((method, f"1x1 stack {k} compiled"))
            eager = per_cpu.get((method, f"1x1 stack {k}"))
            if compiled and eager:
                gain = [a / b for a, b in zip(compiled, eager, strict=True)]
                print(
                    f"{method}: compile gain at K = {k}, per CPU-second: "
                    f"{statistics.median(gain):.2f}×"
                )


if __name__ == "__main__":
    main()
