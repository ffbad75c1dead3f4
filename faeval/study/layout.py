"""How a sweep's runs are laid out: processes, threads, and the seeds stacked per process."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path

from faeval.study.plan import Run, stack_dir, stacks_dir
from faeval.study.state import resumable_stack, stack_record

#: Seeds stacked per Slurm task without a GPU (tools/bench_stack.py: stacking's gain per core
#: peaks near 8 seeds; at 16 the activations outgrow the caches).
CPU_STACK = 8


#: Methods whose seeds train slower stacked than one process each on a CPU, and the measured
#: ratio (seed-epochs per CPU-second, a single-thread process stacking 4 seeds against one
#: training 1; ``python tools/bench_stack.py --methods … --ks 4 --n 10000 --reps 2
#: --batches 8 --warmup 2 --only "alone 1x1" "1x1 stack 4"``, 2-core CPU). A sweep on a CPU
#: without ``--stack`` runs their seeds one process each; on a GPU they stack. Median of 2
#: reps; the 18 other methods gained 1.03–1.16. EP and PC were at 0.77 until a stacked
#: linear's backward stopped forming the weight products their relaxation never reads; now
#: 0.96–1.03 (EP 0.97–1.02): even, not a gain. KP's 0.98 lies within the noise [0.94–1.03].
#: Alone, none of them can lose.
CPU_ALONE: dict[str, float] = {"EP": 1.0, "PC": 1.0, "KP": 0.98}


def cpu_alone(gpus: int, stack_given: bool) -> frozenset[str]:
    """The methods a sweep runs one seed per process: ``CPU_ALONE`` on a CPU unless the user
    chose ``--stack``, none on a GPU."""
    return frozenset() if gpus or stack_given else frozenset(CPU_ALONE)


def gpu_count() -> int:
    """GPUs on this machine (``nvidia-smi -L``), 0 without one."""
    if shutil.which("nvidia-smi") is None:
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines())


def layout(groups: int, seeds: int, cores: int, gpus: int) -> tuple[int, int, int]:
    """Processes, threads per process and seeds stacked per process for this machine.

    With GPUs: one process per GPU, every seed of a (setting, method) stacked, the cores
    shared out. On a CPU: one single-thread process per core, each stacking its share of a
    (setting, method)'s seeds, so that the processes have work from the start; no stack holds
    more than ``CPU_STACK`` seeds, and the seeds are cut into as few rounds of as even stacks
    as that allows (17 seeds on 2 cores: stacks of 5, 4, 4, 4, two at a time).
    """
    if gpus:
        return gpus, max(1, cores // gpus), seeds
    per_group = max(1, -(-cores // max(1, groups)))  # processes each group is split into
    waves = max(1, -(-seeds // (per_group * CPU_STACK)))  # rounds of those processes
    return cores, 1, max(1, -(-seeds // (per_group * waves)))


def slurm_stack(seeds: int, gpus: int) -> int:
    """Seeds stacked per Slurm task: all of a (setting, method) on a GPU, up to CPU_STACK else."""
    return seeds if gpus else min(seeds, CPU_STACK)


def stackable(method: str) -> bool:
    """Whether ``faeval fit --seeds`` stacks this method, as its class declares
    (``CreditMethod.stack_refusal`` is ``None``): a faeval method by name (``DFA``) or a class
    path of your own (``mypkg.Mine``). A class that cannot be imported here runs one seed per
    process, where ``faeval fit`` says why it cannot be found."""
    import importlib  # the class, and torch with it: only when a sweep plans

    module, _, name = method.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "faeval.methods"), name)
    except (ImportError, AttributeError):
        return False
    return getattr(cls, "stack_refusal", "") is None


def chunks(
    runs: list[Run], stack: int, out: Path | None = None, alone: Collection[str] = ()
) -> list[list[Run]]:
    """The runs grouped by (setting, method), each group cut into stacks of ``stack`` seeds
    (of one seed for a method that does not stack, or that ``alone`` names).

    With ``out``, an unfinished earlier stack of a group's runs (``resumable_stack``) is kept
    as it was cut, whatever ``stack`` is now, so that it continues from its checkpoint.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.setting, run.method), []).append(run)
    result = []
    for (setting, method), group in groups.items():
        if out is not None:
            for kept in unfinished_stacks(out, setting, method, group):
                result.append(kept)
                group = [r for r in group if r not in kept]
        if not group:
            continue
        size = stack if stackable(method) and method not in alone else 1
        n = -(-len(group) // size)  # as many stacks as needed, as even as can be
        result += [group[i::n] for i in range(n)]
    return result


def unfinished_stacks(out: Path, setting: str, method: str, group: list[Run]) -> list[list[Run]]:
    """The earlier stacks of ``group``'s runs that can be continued, each as its list of runs."""
    folder = stacks_dir(out, setting, method)
    by_seed = {r.seed: r for r in group}
    found: list[list[Run]] = []
    for stack in sorted(folder.glob("seeds*")) if folder.is_dir() else []:
        seeds = (stack_record(stack) or {}).get("seeds") or []
        taken = {r.seed for kept in found for r in kept}
        if len(seeds) < 2 or not set(seeds) <= by_seed.keys() - taken:
            continue
        runs = [by_seed[s] for s in seeds]
        if stack_dir(out, runs) == stack and resumable_stack(out, runs):
            found.append(runs)
    return found
