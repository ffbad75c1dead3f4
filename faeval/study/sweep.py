"""Run a sweep: methods × seeds × settings from one YAML, the seeds of each stacked in a process.

Usage:
    faeval sweep configs/sweeps/fmnist_reference.yaml --out sweeps/fmnist_reference
    faeval sweep SPEC.yaml --out DIR [--jobs N] [--threads T] [--stack K] [--dry_run]
    faeval sweep SPEC.yaml --out DIR --executor slurm [--partition P] [--time MIN]
        [--cpus_per_task N] [--gpus_per_node N] [--mem_gb G] [--array_parallelism N]
        [--sbatch KEY=VALUE ...] [--stack K] [--no_wait] [--dry_run]

The YAML:
    base: configs/some_experiment.yaml   # a `faeval fit` config (optional)
    seeds: [0, 1, 2]
    methods: [BP, FA, DFA]               # FrozenBlocks is added: (d) needs it per seed
    settings:                            # optional; one setting "default" without it
      d256: {model.backbone.d_hidden: 256}
    args: ["--trainer.max_epochs", "5"]  # optional, passed to every run
    protocol: {every_n_epochs: 5, settings: {null_draws: 8}}  # Protocol callback; false: off
    slurm:                               # optional: --executor slurm's resources
      partition: gpu
      time: 120                          # minutes per run (one array task; default 60)
      cpus_per_task: 4
      gpus_per_node: 1
      mem_gb: 16
      array_parallelism: 32              # tasks of the array running at once
      signal_delay_s: 90                 # USR2 this long before the time limit: requeue
      sbatch: {account: my_lab, qos: normal}   # any other sbatch option
      setup: ["source ~/venv/bin/activate"]    # shell lines before each task

Each run lives in DIR/runs/<setting>/<method>/seed<S>/ (config.yaml, diagnostics.jsonl,
protocol.jsonl, checkpoints/last.ckpt, run.log, status.json). The sweep can be started again
at any time: a run whose status.json says "ok" is skipped; an unfinished one (killed, its job
lost, preempted: no status, or status "interrupted") continues from its checkpoints/last.ckpt
in place, bit for bit; a failed one (the process exited with an error) starts again from
scratch, its earlier folder kept as DIR/attempts/<setting>/<method>/seed<S>-<time>/. A failed
run is recorded (status "failed", exit code, the end of its log) and the sweep goes on.

The seeds of a (setting, method) train stacked in one process (``faeval fit --seeds``: each
seed still an ordinary run in its own folder; the stack's own config, checkpoints/last.ckpt,
stack.json and log go to DIR/stacks/<setting>/<method>/seeds<list>/, and a run's ``seconds``
are its stack's). An unfinished stack continues from its own last.ckpt as a whole; a seed
whose stack is gone or was cut otherwise continues alone from its own last.ckpt (a seed's
checkpoint is its lone run's); a run started afresh sets aside every earlier stack that held
its seed, so that no stale stack is continued into its folder. ``--stack 1`` runs one process
per run.

Executors. ``local`` (the default, nothing to install): processes × threads × seeds per
process are chosen for the machine unless given (``--jobs``, ``--threads``, ``--stack``): on a
GPU machine one process per GPU with every seed of a (setting, method) stacked; on a CPU one
single-thread process per core, each stacking its share of the seeds (tools/bench_stack.py:
on two cores two single-thread processes of stacked seeds beat one two-thread process and one
process per seed). With ``--jobs`` alone, each job gets cores // jobs threads
(OMP_NUM_THREADS). ``slurm`` (``pip install 'faeval[slurm]'``): one Slurm job array through
submitit, one task per stack (or run) not yet finished, resources from the spec's ``slurm:``
with the command line's options on top; each task runs with cpus_per_task threads and stacks
every seed of its (setting, method) when it has a GPU, up to 8 on a CPU (``--stack``
overrides). The submitter then waits for the array (``--no_wait``: it returns after
submitting; each task rewrites results.csv as it ends) and prints the same lines and files as
a local sweep. Submitit's logs go to DIR/slurm/. Requeue: Slurm sends USR2 ``signal_delay_s``
before a task's time limit (and on preemption); submitit's handler stops the run or stack (it
loses at most the work since its last checkpoint: every epoch, or every N steps with
``--checkpoint_every_n_steps N`` in ``args``), requeues the task, and the requeued task
continues from checkpoints/last.ckpt (up to 3 time-outs per task, preemptions unlimited).
A task whose requeue Slurm lost (it ended while its run says "interrupted") is submitted
again by the waiting sweep, up to 3 times, and continues from last.ckpt the same way.

Prints one line per run as it ends and, at the end, the throughput in seed-epochs per second.
Writes DIR/sweep.json (the plan) and DIR/results.csv (one row per run, timm bulk_runner style).
Then: faeval report DIR
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from faeval.errors import ConfigError, FaevalError
from faeval.runlog import RunLog

FROZEN = "FrozenBlocks"
COLUMNS = [
    "setting",
    "method",
    "seed",
    "status",
    "epochs",
    "seconds",
    "test_acc",
    "g_L",
    "growth",
    "rc",
    "run_dir",
    "error",
]


@dataclass(frozen=True)
class Run:
    """One run of the sweep."""

    setting: str
    method: str
    seed: int
    overrides: tuple[tuple[str, object], ...]

    def dir(self, out: Path) -> Path:
        return out / "runs" / self.setting / self.method / f"seed{self.seed}"


def flat_options(options: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested option dicts as dotted keys: {"settings": {"a": 1}} -> [("settings.a", 1)]."""
    out = []
    for key, value in options.items():
        if isinstance(value, dict):
            out += flat_options(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def cli_value(value: object) -> str:
    """A YAML value as jsonargparse reads it on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


#: The keys a sweep YAML may hold.
SPEC_KEYS = ("base", "seeds", "methods", "settings", "args", "protocol", "slurm")


def load_spec(path: Path) -> dict:
    """The sweep YAML, checked.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, missing or malformed,
            a method is not one faeval knows.
    """
    if not path.is_file():
        raise ConfigError(f"no sweep spec at {path}; pass the YAML file of a sweep")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must be a mapping with keys {', '.join(SPEC_KEYS)}")
    for key in spec:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"{path}: unknown key `{key}`{hint} (keys: {', '.join(SPEC_KEYS)})")
    for key in ("seeds", "methods"):
        if not isinstance(spec.get(key), list) or not spec[key]:
            raise ConfigError(f"{path}: `{key}` must be a non-empty list, got {spec.get(key)!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec["seeds"]):
        raise ConfigError(f"{path}: `seeds` must be integers, got {spec['seeds']!r}")
    known = known_methods()
    for method in spec["methods"]:
        if "." not in str(method) and method not in known:
            close = difflib.get_close_matches(str(method), known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"{path}: unknown method {method!r}; {hint}(methods: {', '.join(known)}, or a "
                "class path)"
            )
    settings = spec.get("settings")
    if settings is not None and not (
        isinstance(settings, dict) and all(isinstance(v, dict) for v in settings.values())
    ):
        raise ConfigError(
            f"{path}: `settings` must map names to option dicts, e.g. "
            "{d256: {model.backbone.d_hidden: 256}}"
        )
    if spec.get("protocol") not in (None, False) and not isinstance(spec["protocol"], dict):
        raise ConfigError(f"{path}: `protocol` must be a mapping of Protocol options or false")
    if spec.get("base") is not None and not Path(spec["base"]).is_file():
        raise ConfigError(
            f"{path}: base config {spec['base']} not found (paths are relative to "
            "the directory the sweep runs from)"
        )
    return spec


def known_methods() -> list[str]:
    """The short method names ``faeval fit --model`` accepts."""
    from faeval.cli import known_names  # loads torch: only when a spec is checked

    return known_names()["model"]


def plan(spec: dict) -> list[Run]:
    """Every run: settings × methods (+ FrozenBlocks) × seeds."""
    settings = spec.get("settings") or {"default": {}}
    methods = list(dict.fromkeys([*spec["methods"], FROZEN]))
    return [
        Run(name, m, int(s), tuple((overrides or {}).items()))
        for name, overrides in settings.items()
        for m in methods
        for s in spec["seeds"]
    ]


def fit_command(spec: dict, run: Run, seed_args: list[str]) -> list[str]:
    """``faeval fit`` of a run's setting and method, seeded by ``seed_args``."""
    cmd = [sys.executable, "-m", "faeval", "fit"]
    if spec.get("base"):
        cmd += ["--config", str(spec["base"])]
    cmd += ["--model", run.method, *seed_args]
    for key, value in run.overrides:
        cmd += [f"--{key}", cli_value(value)]
    cmd += [str(a) for a in spec.get("args") or []]
    protocol = spec.get("protocol", {})
    if protocol is not False:
        cmd += ["--trainer.callbacks+=Protocol"]
        for key, value in flat_options(protocol or {}):
            cmd += [f"--trainer.callbacks.{key}", cli_value(value)]
    return cmd


def command(spec: dict, run: Run, run_dir: Path) -> list[str]:
    """The ``faeval fit`` command line of one run, logging straight into ``run_dir``."""
    cmd = fit_command(spec, run, ["--seed_everything", str(run.seed)])
    cmd += [
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.logger",
        "TensorBoardLogger",
        "--trainer.logger.save_dir",
        str(run_dir),
        "--trainer.logger.name",
        "",
        "--trainer.logger.version",
        "",
        "--trainer.enable_progress_bar",
        "false",
    ]
    return cmd


def seed_list(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> ``"0,1,2,5"``: the ``--seeds`` of a stack."""
    return ",".join(str(s) for s in seeds)


def stacks_dir(out: Path, setting: str, method: str) -> Path:
    """Where the stacks of a (setting, method) keep their own folders."""
    return Path(out) / "stacks" / setting / method


def stack_dir(out: Path, runs: list[Run]) -> Path:
    """Where a stack of runs keeps its own config, checkpoints and log."""
    first = runs[0]
    name = "seeds" + "-".join(str(r.seed) for r in runs)
    return stacks_dir(out, first.setting, first.method) / name


def stacked_command(spec: dict, runs: list[Run], out: Path) -> list[str]:
    """``faeval fit --seeds``: the runs' seeds stacked in one process, each in its run folder."""
    cmd = fit_command(spec, runs[0], ["--seeds", seed_list([r.seed for r in runs])])
    template = str(runs[0].dir(out).with_name("seed{seed}"))
    folder = stack_dir(out, runs)
    return [
        *cmd,
        "--stack.run_dirs",
        template,
        "--stack.dir",
        str(folder),
        "--trainer.default_root_dir",
        str(folder),
        "--trainer.enable_progress_bar",
        "false",
    ]


LAST_CKPT = Path("checkpoints") / "last.ckpt"
#: A stack's record in its folder (``faeval.cli.stacked.STACK_FILE``; not imported: torch).
STACK_FILE = "stack.json"
#: Seeds stacked per Slurm task without a GPU (tools/bench_stack.py: stacking's gain per core
#: peaks near 8 seeds; at 16 the activations outgrow the caches).
CPU_STACK = 8
#: Environment variables a run does not inherit from a Slurm task: with them Lightning would
#: take the run for a process of a multi-process Slurm launch (and handle Slurm's signals).
SLURM_PREFIXES = ("SLURM_", "SLURMD_", "SUBMITIT_")


def resumable(run_dir: Path) -> bool:
    """Whether an earlier attempt of the run can be continued from its last checkpoint.

    Yes when it left ``checkpoints/last.ckpt`` and did not fail (no status.json: killed or
    lost with its job; status "interrupted": stopped for a requeue). A failed run (an error
    in the process) starts again from scratch.
    """
    status = read_status(run_dir) or {}
    return (run_dir / LAST_CKPT).is_file() and status.get("status") in (None, "interrupted")


def unfinished(run_dir: Path) -> bool:
    """Whether the run's status lets it continue (none: killed or lost; or "interrupted")."""
    return (read_status(run_dir) or {}).get("status") in (None, "interrupted")


def stack_record(folder: Path) -> dict | None:
    """A stack folder's stack.json, or None."""
    try:
        return json.loads((folder / STACK_FILE).read_text())
    except (OSError, ValueError):
        return None


def resumable_stack(out: Path, runs: list[Run]) -> bool:
    """Whether an earlier stack of exactly these runs can be continued from its last.ckpt.

    Yes when its folder holds last.ckpt and its record names these seeds, and none of its
    runs has failed or finished since (each is unfinished).
    """
    folder = stack_dir(out, runs)
    record = stack_record(folder) or {}
    return (
        (folder / LAST_CKPT).is_file()
        and record.get("seeds") == [r.seed for r in runs]
        and all(unfinished(r.dir(out)) for r in runs)
    )


def continues(out: Path, runs: list[Run]) -> bool:
    """Whether the runs (a stack, or one run) continue from a checkpoint rather than afresh."""
    if len(runs) > 1:
        return resumable_stack(out, runs)
    return runs[0].dir(out).exists() and resumable(runs[0].dir(out))


def set_aside(out: Path, folder: Path) -> None:
    """Moves an unfinished or failed earlier attempt out of the way, to DIR/attempts/…-<time>."""
    if not folder.exists():
        return
    runs = Path(out) / "runs"
    rel = folder.relative_to(runs) if folder.is_relative_to(runs) else folder.relative_to(out)
    kept = Path(out) / "attempts" / rel
    kept = kept.with_name(f"{kept.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, kept)


def set_aside_stacks_of(out: Path, runs: list[Run]) -> None:
    """Sets aside every earlier stack that trained one of ``runs`` (started afresh now), so that
    a later sweep never continues a stale stack into their new folders."""
    seeds = {r.seed for r in runs}
    folder = stacks_dir(out, runs[0].setting, runs[0].method)
    for stack in sorted(folder.glob("seeds*")) if folder.is_dir() else []:
        if seeds & set((stack_record(stack) or {}).get("seeds") or []):
            set_aside(out, stack)


def execute(
    spec: dict,
    run: Run,
    out: Path,
    threads: int,
    started: Callable[[subprocess.Popen], None] | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> dict:
    """Runs one training process for one run and records its status (``execute_stack``)."""
    return execute_stack(spec, [run], out, threads, started, env, preexec_fn)[0]


def execute_stack(
    spec: dict,
    runs: list[Run],
    out: Path,
    threads: int,
    started: Callable[[subprocess.Popen], None] | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> list[dict]:
    """Trains ``runs`` (one setting and method) in one process, stacked when more than one;
    records each run's status (never raises for a failed run).

    An unfinished earlier attempt continues from its last.ckpt (the stack's, or the lone
    run's); any other is set aside and the runs start afresh.

    Args:
        spec, runs, out: the sweep, the runs and the sweep folder.
        threads: OMP_NUM_THREADS of the process.
        started: called with the process once started (the Slurm task keeps it to stop it).
        env: the process's environment (default: this process's).
        preexec_fn: run in the child before ``faeval`` starts (the Slurm task's signals).
    """
    resume = continues(out, runs)
    stacked = len(runs) > 1
    if not resume:  # a failed or stale earlier attempt: keep it, out of the way
        set_aside_stacks_of(out, runs)
        if stacked:
            set_aside(out, stack_dir(out, runs))  # one killed before it wrote its record
        for run in runs:
            set_aside(out, run.dir(out))
    if stacked:
        folder = stack_dir(out, runs)
        cmd = stacked_command(spec, runs, out)
    else:
        folder = runs[0].dir(out)
        cmd = command(spec, runs[0], folder)
    for run in runs:
        run.dir(out).mkdir(parents=True, exist_ok=True)
        (run.dir(out) / "status.json").unlink(missing_ok=True)  # "interrupted" no longer holds
    folder.mkdir(parents=True, exist_ok=True)
    if resume:
        cmd += ["--ckpt_path", str(folder / LAST_CKPT)]
    env = {
        **(os.environ if env is None else env),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    start = time.perf_counter()
    log_file = folder / "run.log"
    with log_file.open("a" if resume else "w") as log:
        if resume:
            log.write(f"[sweep] continuing from {LAST_CKPT} ({time.strftime('%c')})\n")
            log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn
        )
        if started is not None:
            started(proc)
        rc = proc.wait()
    seconds = time.perf_counter() - start
    text = log_file.read_text()
    if stacked:  # the stack's log, beside its checkpoints and in every run's folder
        for run in runs:
            # (a stack that failed before its first row gave its empty run folders back)
            run.dir(out).mkdir(parents=True, exist_ok=True)
            (run.dir(out) / "run.log").write_text(text)
    return [record_status(run, out, rc, seconds, text, cmd, resume) for run in runs]


def record_status(
    run: Run, out: Path, rc: int, seconds: float, log: str, cmd: list[str], resumed: bool
) -> dict:
    """Writes and returns a run's status.json from its rows and its process's exit."""
    run_dir = run.dir(out)
    row = RunLog(run_dir).last_row() or {}
    error = ""
    if rc:
        error = " | ".join(log.strip().splitlines()[-3:])[-500:]
    status = {
        "setting": run.setting,
        "method": run.method,
        "seed": run.seed,
        "status": "ok" if rc == 0 and row else "failed",
        "rc": rc,
        "epochs": row.get("epoch", 0),
        "seconds": round(seconds, 2),
        "test_acc": row.get("test/acc"),
        "g_L": row.get("g_L"),
        "growth": row.get("growth"),
        "run_dir": str(run_dir.relative_to(out)),
        "resumed": resumed,
        "error": error or ("" if row else "no diagnostics rows"),
        "cmd": cmd,
    }
    (run_dir / "status.json").write_text(json.dumps(status, indent=1))
    return status


def read_status(run_dir: Path) -> dict | None:
    path = run_dir / "status.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_results(out: Path, runs: list[Run]) -> Path:
    """DIR/results.csv: one row per planned run, from the runs' status files.

    Written to a temporary file and renamed over the old one: Slurm tasks ending together
    each rewrite it, and a reader never sees half a file.
    """
    path = out / "results.csv"
    temp = out / f".results.csv.{os.getpid()}.tmp"
    with temp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            status = read_status(run.dir(out)) or {
                "setting": run.setting,
                "method": run.method,
                "seed": run.seed,
                "status": "missing",
                "run_dir": str(run.dir(out).relative_to(out)),
            }
            writer.writerow(status)
    os.replace(temp, path)
    return path


def report_line(run: Run, status: dict) -> str:
    """The line printed when a run ends."""
    acc = status.get("test_acc")
    return (
        f"[sweep] {status['status']:<6} {run.setting}/{run.method}/seed{run.seed}: "
        f"{status.get('epochs') or 0} epochs in {status.get('seconds') or 0:.1f} s, test acc "
        + ("n/a" if acc is None else f"{acc:.4f}")
        + (f"  ({status['error']})" if status.get("error") else "")
    )


# --- How the runs are laid out: processes, threads, seeds per process ----------------------


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
    (setting, method)'s seeds, so that the processes have work from the start.
    """
    if gpus:
        return gpus, max(1, cores // gpus), seeds
    per_group = max(1, -(-cores // max(1, groups)))  # processes each group is split into
    return cores, 1, max(1, -(-seeds // per_group))


def slurm_stack(seeds: int, gpus: int) -> int:
    """Seeds stacked per Slurm task: all of a (setting, method) on a GPU, up to CPU_STACK else."""
    return seeds if gpus else min(seeds, CPU_STACK)


#: The methods ``faeval fit --seeds`` stacks (``faeval.stacked.convert.STACKABLE_METHODS``,
#: by name: that module imports torch). The others, a class path of your own included, run
#: one seed per process.
STACKABLE_METHODS = ("BP", "FA", "DFA", "FrozenBlocks", "StateBridge", "CreditBridge", "EP")


def chunks(runs: list[Run], stack: int, out: Path | None = None) -> list[list[Run]]:
    """The runs grouped by (setting, method), each group cut into stacks of ``stack`` seeds
    (of one seed for a method that does not stack).

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
        size = stack if method in STACKABLE_METHODS else 1
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


# --- Slurm: one job array through submitit ------------------------------------------------

#: The Slurm resources a spec's ``slurm:`` and the command line may set (submitit's names).
SLURM_KEYS = (
    "partition",
    "time",
    "cpus_per_task",
    "gpus_per_node",
    "mem_gb",
    "array_parallelism",
    "signal_delay_s",
    "sbatch",
    "setup",
)


class SlurmRun:
    """One stack of runs (or one run) as a Slurm array task: ``execute_stack`` in the task,
    requeued on USR2.

    Submitit calls ``checkpoint`` from its USR2 handler (Slurm's warning before the time
    limit, or preemption): it stops the training process (SIGTERM, then SIGKILL), marks its
    runs "interrupted", and hands submitit the same task to requeue, which continues from
    checkpoints/last.ckpt (the stack's, or the run's). The training process ignores USR2, so
    that only this handler decides when it stops.
    """

    def __init__(
        self, spec: dict, group: list[Run], out: Path, threads: int, runs: list[Run]
    ) -> None:
        self.spec, self.group, self.out, self.threads, self.runs = spec, group, out, threads, runs
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> list[dict]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(SLURM_PREFIXES)}
        job = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        statuses = execute_stack(
            self.spec,
            self.group,
            self.out,
            self.threads,
            started=self._started,
            env=env,
            preexec_fn=_ignore_usr2,
        )
        for run, status in zip(self.group, statuses, strict=True):
            status["slurm_job"] = "_".join(filter(None, job))
            (run.dir(self.out) / "status.json").write_text(json.dumps(status, indent=1))
        write_results(self.out, self.runs)
        return statuses

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def checkpoint(self, *args, **kwargs):
        """Stops the runs where their last checkpoint stands and returns the task to requeue."""
        import submitit

        if self._proc is not None:
            _stop(self._proc.pid)
        for run in self.group:
            run_dir = run.dir(self.out)
            status = {"status": "interrupted", "setting": run.setting, "method": run.method,
                      "seed": run.seed, "run_dir": str(run_dir.relative_to(self.out))}  # fmt: skip
            (run_dir / "status.json").write_text(json.dumps(status, indent=1))
        return submitit.helpers.DelayedSubmission(
            SlurmRun(self.spec, self.group, self.out, self.threads, self.runs)
        )


def _stop(pid: int, grace_s: float = 30.0) -> None:
    """SIGTERM (Lightning stops after the step it is in), SIGKILL after ``grace_s``.

    Waits with os.waitpid: this runs in a signal handler that interrupted Popen.wait in the
    same thread, which holds the Popen's (non-reentrant) wait lock.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.1)
    except ChildProcessError:
        pass  # already reaped


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def slurm_options(spec: dict, args: argparse.Namespace) -> dict:
    """The Slurm resources: the spec's ``slurm:``, then the command line's on top."""
    options = dict(spec.get("slurm") or {})
    unknown = set(options) - set(SLURM_KEYS)
    if unknown:
        raise ValueError(
            f"slurm: unknown keys {sorted(unknown)}; known: {', '.join(SLURM_KEYS)} (other "
            "sbatch options go under slurm.sbatch)"
        )
    for key in SLURM_KEYS:
        value = getattr(args, key, None)
        if key == "sbatch" and value:
            options["sbatch"] = {**(options.get("sbatch") or {}), **dict(value)}
        elif key != "sbatch" and value is not None:
            options[key] = value
    options.setdefault("cpus_per_task", 1)
    options.setdefault("time", 60)
    return options


def slurm_parameters(options: dict, name: str) -> dict:
    """submitit's SlurmExecutor parameters for the options."""
    params = {"job_name": name, "additional_parameters": dict(options.get("sbatch") or {})}
    for key in ("partition", "time", "cpus_per_task", "gpus_per_node", "array_parallelism",
                "signal_delay_s", "setup"):  # fmt: skip
        if options.get(key) is not None:
            params[key] = options[key]
    if options.get("mem_gb") is not None:
        params["mem"] = f"{options['mem_gb']}GB"
    return params


def submitit_module():
    """submitit, or a clear error naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise SystemExit(
            "--executor slurm needs submitit: pip install 'faeval[slurm]' (or pip install submitit)"
        ) from None
    return submitit


def sbatch_script(options: dict, out: Path, tasks: int) -> str:
    """The sbatch script submitit writes for the array (for ``--dry_run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(
        command="python -u -m submitit.core._submit <folder>",
        folder=out / "slurm" / "%j",
        map_count=tasks,
        **slurm_parameters(options, out.name),
    )


def submit_slurm(
    spec: dict, work: list[list[Run]], runs: list[Run], out: Path, options: dict
) -> list:
    """Submits one job array, one task per stack (or run); returns submitit's jobs."""
    submitit = submitit_module()
    executor = submitit.SlurmExecutor(folder=out / "slurm" / "%j", max_num_timeout=3)
    executor.update_parameters(**slurm_parameters(options, out.name))
    threads = int(options["cpus_per_task"])
    with executor.batch():
        jobs = [executor.submit(SlurmRun(spec, group, out, threads, runs)) for group in work]
    return jobs


#: Slurm job states a task does not leave again (squeue's short codes).
FINAL_STATES = {"BF", "CA", "CD", "DL", "F", "NF", "OOM", "PR", "RV", "TO"}


def queued(job_ids: list[str]) -> set[str]:
    """The array tasks not yet ended (squeue; sacct may be off on small clusters).

    Asks for every state: by default squeue hides a task in the brief "requeued" (RQ)
    state between its USR2 stop and its return to pending, and the sweep would read it as
    ended. A task is ended once squeue shows it in a final state or no longer knows it.

    Raises:
        RuntimeError: squeue fails (no cluster).
    """
    arrays = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i %t",
           "--jobs", ",".join(arrays)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode and "Invalid job id" not in done.stderr:
        raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
    rows = (line.split() for line in done.stdout.splitlines())
    return {row[0] for row in rows if len(row) == 2 and row[1] not in FINAL_STATES}


def wait_slurm(
    jobs: list,
    work: list[list[Run]],
    out: Path,
    poll: float = 2.0,
    grace: float = 10.0,
    resubmit: Callable[[list[Run]], object] | None = None,
    tries: int = 3,
) -> list[dict]:
    """Waits until every task has left the queue; prints each run's line as it ends.

    A task out of the queue whose runs are not all ended (a run "interrupted" for a requeue,
    or without a status) is given ``grace`` seconds to come back. A task whose requeue Slurm
    lost (its runs stay "interrupted": on a small cluster the task's own ``scontrol
    requeue`` can race with its batch script's exit, which then marks it failed) is
    submitted again through ``resubmit``, up to ``tries`` times; it continues from its
    last.ckpt as the requeued task would have.
    """
    pending = {job.job_id: group for job, group in zip(jobs, work, strict=True)}
    missing_since: dict[str, float] = {}
    tried: dict[tuple[Run, ...], int] = {}
    done = []
    while pending:
        time.sleep(poll)
        waiting = queued(list(pending))
        now = time.monotonic()
        for job_id in [j for j in pending if j not in waiting]:
            statuses = [read_status(run.dir(out)) for run in pending[job_id]]
            settled = all(s and s.get("status") not in (None, "interrupted") for s in statuses)
            if not settled and now - missing_since.setdefault(job_id, now) < grace:
                continue
            group = pending.pop(job_id)
            key = tuple(group)
            lost = any(s and s.get("status") == "interrupted" for s in statuses)
            if lost and resubmit is not None and tried.get(key, 0) < tries:
                tried[key] = tried.get(key, 0) + 1
                job = resubmit(group)
                pending[job.job_id] = group
                names = ", ".join(f"{r.setting}/{r.method}/seed{r.seed}" for r in group)
                print(
                    f"[sweep] Slurm did not requeue task {job_id} ({names}): submitted again "
                    f"as {job.job_id}, continuing from its last.ckpt",
                    flush=True,
                )
                continue
            for run, status in zip(group, statuses, strict=True):
                status = status or {
                    "status": "failed",
                    "epochs": 0,
                    "error": f"Slurm task {job_id} ended without a status: see {out / 'slurm'}",
                }
                if status["status"] == "interrupted":
                    status = {**status, "status": "failed", "error": "interrupted, not requeued"}
                print(report_line(run, status), flush=True)
                done.append(status)
        for job_id in waiting:
            missing_since.pop(job_id, None)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="faeval sweep",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", type=Path, help="the sweep YAML")
    parser.add_argument("--out", type=Path, required=True, help="the sweep directory")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes side by side (local; default: for the machine)",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="cores to share out (local; with --jobs alone, threads per job = cores // jobs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="threads per process (local)")
    parser.add_argument(
        "--stack",
        type=int,
        default=None,
        help="seeds of a (setting, method) stacked per process or task; 1: one per run",
    )
    parser.add_argument("--dry_run", action="store_true", help="print what would run only")
    parser.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local process pool, or one Slurm job array through submitit",
    )
    slurm = parser.add_argument_group("Slurm (--executor slurm; over the spec's slurm:)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--time", type=int, help="minutes per run (sbatch --time)")
    slurm.add_argument("--cpus_per_task", type=int, help="CPUs per run (default 1)")
    slurm.add_argument("--gpus_per_node", type=int, help="GPUs per run")
    slurm.add_argument("--mem_gb", type=int, help="memory per run, GB")
    slurm.add_argument("--array_parallelism", type=int, help="array tasks running at once")
    slurm.add_argument("--signal_delay_s", type=int, help="USR2 this long before the limit")
    slurm.add_argument(
        "--sbatch",
        action="append",
        type=lambda kv: tuple(kv.split("=", 1)) if "=" in kv else _bad_sbatch(kv),
        metavar="KEY=VALUE",
        help="any other sbatch option (repeatable): --sbatch account=lab --sbatch qos=high",
    )
    slurm.add_argument(
        "--no_wait", action="store_true", help="return once submitted (tasks write results)"
    )
    args = parser.parse_args(argv)
    for name in ("jobs", "threads", "stack"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    try:
        spec = load_spec(args.spec)
    except FaevalError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    runs = plan(spec)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    (out / "sweep.json").write_text(
        json.dumps(
            {
                "spec": str(args.spec),
                "base": spec.get("base"),
                "seeds": spec["seeds"],
                "methods": sorted({r.method for r in runs}),
                "settings": sorted({r.setting for r in runs}),
                "runs": [
                    {
                        "setting": r.setting,
                        "method": r.method,
                        "seed": r.seed,
                        "run_dir": str(r.dir(out)),
                    }
                    for r in runs
                ],
            },
            indent=1,
        )
    )
    todo = [r for r in runs if (read_status(r.dir(out)) or {}).get("status") != "ok"]
    finished = len(runs) - len(todo)
    seeds = len(spec["seeds"])
    if args.executor == "slurm":
        options = slurm_options(spec, args)
        threads = int(options["cpus_per_task"])
        stack = args.stack or slurm_stack(seeds, int(options.get("gpus_per_node") or 0))
        work = chunks(todo, stack, out)
        most = max((len(g) for g in work), default=stack)
        how = (
            f"one Slurm job array of {len(work)} tasks × {threads} threads, up to {most} "
            "seeds stacked per task"
        )
    else:
        groups = len({(r.setting, r.method) for r in todo})
        jobs, threads, stack = layout(groups, seeds, args.cores, gpu_count())
        jobs = args.jobs or jobs
        threads = args.threads or (max(1, args.cores // jobs) if args.jobs else threads)
        stack = args.stack or stack
        work = chunks(todo, stack, out)
        most = max((len(g) for g in work), default=stack)
        how = f"{jobs} jobs × {threads} threads, up to {most} seeds stacked per job"
    go_on = sum(len(group) for group in work if continues(out, group))
    print(
        f"[sweep] {len(runs)} runs, {finished} already finished, {len(todo)} to run "
        f"({go_on} continuing from their last checkpoint) as {how}",
        flush=True,
    )
    if args.dry_run:
        if args.executor == "slurm" and work:
            print(sbatch_script(options, out, len(work)))
        for group in work:
            if len(group) == 1:
                folder, cmd = group[0].dir(out), command(spec, group[0], group[0].dir(out))
            else:
                folder, cmd = stack_dir(out, group), stacked_command(spec, group, out)
            if continues(out, group):
                cmd += ["--ckpt_path", str(folder / LAST_CKPT)]
            print(shlex.join(cmd))
        return 0
    start = time.perf_counter()
    if args.executor == "slurm":
        if not todo:
            done = []
        else:
            submitted = submit_slurm(spec, work, runs, out, options)
            print(
                f"[sweep] submitted job array {submitted[0].job_id.split('_')[0]} "
                f"({len(submitted)} tasks); submitit logs in {out / 'slurm'}",
                flush=True,
            )
            if args.no_wait:
                return 0

            def resubmit(group: list[Run]):
                return submit_slurm(spec, [group], runs, out, options)[0]

            done = wait_slurm(submitted, work, out, resubmit=resubmit)
    else:
        lock = threading.Lock()

        def one(group: list[Run]) -> list[dict]:
            statuses = execute_stack(spec, group, out, threads)
            with lock:
                for run, status in zip(group, statuses, strict=True):
                    print(report_line(run, status), flush=True)
            return statuses

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            done = [status for statuses in pool.map(one, work) for status in statuses]
    wall = time.perf_counter() - start
    epochs = sum(s.get("epochs") or 0 for s in done)
    failed = [s for s in done if s["status"] != "ok"]
    results = write_results(out, runs)
    rate = epochs / wall if wall > 0 else 0.0
    print(
        f"[sweep] {len(done) - len(failed)} ok, {len(failed)} failed; {epochs} seed-epochs in "
        f"{wall:.1f} s = {rate:.3f} seed-epochs/s ({how})\n"
        f"[sweep] results: {results}\n[sweep] report: faeval report {args.out}",
        flush=True,
    )
    return 1 if failed else 0


def _bad_sbatch(value: str):
    raise argparse.ArgumentTypeError(f"--sbatch takes KEY=VALUE, got {value!r}")


if __name__ == "__main__":
    sys.exit(main())
