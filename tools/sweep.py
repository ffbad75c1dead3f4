"""Run a sweep: methods × seeds × settings from one YAML, one ``faeval fit`` process per run.

Usage:
    python tools/sweep.py configs/sweeps/fmnist_reference.yaml --out sweeps/fmnist_reference
    python tools/sweep.py SPEC.yaml --out DIR [--jobs N] [--threads T] [--stack K] [--dry_run]

The YAML:
    base: configs/some_experiment.yaml   # a `faeval fit` config (optional)
    seeds: [0, 1, 2]
    methods: [BP, FA, DFA]               # FrozenBlocks is added: (d) needs it per seed
    settings:                            # optional; one setting "default" without it
      d256: {model.backbone.d_hidden: 256}
    args: ["--trainer.max_epochs", "5"]  # optional, passed to every run
    protocol: {every_n_epochs: 5, settings: {null_draws: 8}}  # Protocol callback; false: off

Each run lives in DIR/runs/<setting>/<method>/seed<S>/ (config.yaml, diagnostics.jsonl,
protocol.jsonl, checkpoints/, run.log, status.json). The sweep is resumable: a run whose
status.json says "ok" is skipped; any other is started again from scratch, its earlier folder
kept as DIR/attempts/<setting>/<method>/seed<S>-<time>/. A failed run is
recorded (status "failed", exit code, the end of its log) and the sweep goes on.

The seeds of a (setting, method) train stacked in one process (``faeval fit --seeds``: each
seed still an ordinary run in its own folder; the stack's own checkpoints and log go to
DIR/stacks/<setting>/<method>/seeds<list>/, and a run's ``seconds`` are its stack's). Processes
× threads × seeds per process are chosen for the machine unless given: on a GPU machine one
process per GPU with every seed of a (setting, method) stacked; on a CPU one single-thread
process per core, each stacking its share of the seeds (tools/bench_stack.py: on two cores
two single-thread processes of stacked seeds beat one two-thread process and one process per
seed). ``--stack 1`` runs one process per seed, as before.

Prints one line per run as it ends and, at the end, the throughput in seed-epochs per second.
Writes DIR/sweep.json (the plan) and DIR/results.csv (one row per run, timm bulk_runner style).
Then: python tools/report.py DIR
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
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
SPEC_KEYS = ("base", "seeds", "methods", "settings", "args", "protocol")


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


def stack_dir(out: Path, runs: list[Run]) -> Path:
    """Where a stack of runs keeps its own config, checkpoints and log."""
    first = runs[0]
    name = "seeds" + "-".join(str(r.seed) for r in runs)
    return Path(out) / "stacks" / first.setting / first.method / name


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


def execute(spec: dict, run: Run, out: Path, threads: int) -> dict:
    """Runs one training process and records its status (never raises for a failed run)."""
    return execute_stack(spec, [run], out, threads)[0]


def execute_stack(spec: dict, runs: list[Run], out: Path, threads: int) -> list[dict]:
    """Trains ``runs`` (one setting and method) in one process: stacked when more than one.

    Records each run's status (never raises for a failed run).
    """
    for run in runs:
        set_aside(out, run.dir(out))
        run.dir(out).mkdir(parents=True)
    if len(runs) == 1:
        log_dir, cmd = runs[0].dir(out), command(spec, runs[0], runs[0].dir(out))
    else:
        log_dir = stack_dir(out, runs)
        set_aside(out, log_dir)
        log_dir.parent.mkdir(parents=True, exist_ok=True)
        cmd = stacked_command(spec, runs, out)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    start = time.perf_counter()
    log_file = runs[0].dir(out) / "run.log"
    with log_file.open("w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - start
    text = log_file.read_text()
    if len(runs) > 1:  # the stack's log: beside its checkpoints and in every run's folder
        log_dir.mkdir(parents=True, exist_ok=True)
        for target in [log_dir, *[r.dir(out) for r in runs[1:]]]:
            (target / "run.log").write_text(text)
    return [record_status(run, run.dir(out), rc, seconds, text, cmd) for run in runs]


def record_status(run: Run, run_dir: Path, rc: int, seconds: float, log: str, cmd: list) -> dict:
    """Writes and returns a run's status.json from its rows and its process's exit."""
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
        "run_dir": str(run_dir),
        "error": error or ("" if row else "no diagnostics rows"),
        "cmd": cmd,
    }
    (run_dir / "status.json").write_text(json.dumps(status, indent=1))
    return status


def read_status(run_dir: Path) -> dict | None:
    path = run_dir / "status.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_results(out: Path, runs: list[Run]) -> Path:
    """DIR/results.csv: one row per planned run, from the runs' status files."""
    path = out / "results.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for run in runs:
            status = read_status(run.dir(out)) or {
                "setting": run.setting,
                "method": run.method,
                "seed": run.seed,
                "status": "missing",
                "run_dir": str(run.dir(out)),
            }
            writer.writerow(status)
    return path


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


def chunks(runs: list[Run], stack: int) -> list[list[Run]]:
    """The runs grouped by (setting, method), each group cut into stacks of ``stack`` seeds."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.setting, run.method), []).append(run)
    out = []
    for group in groups.values():
        n = -(-len(group) // stack)  # as many stacks as needed, as even as can be
        out += [group[i::n] for i in range(n)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", type=Path, help="the sweep YAML")
    parser.add_argument("--out", type=Path, required=True, help="the sweep directory")
    parser.add_argument(
        "--jobs", type=int, default=None, help="processes side by side (default: for the machine)"
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="cores to share out (threads per job = cores // jobs)",
    )
    parser.add_argument("--threads", type=int, default=None, help="threads per process")
    parser.add_argument(
        "--stack",
        type=int,
        default=None,
        help="seeds of a (setting, method) stacked per process; 1: one process per run",
    )
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
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
    (args.out / "sweep.json").write_text(
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
                        "run_dir": str(r.dir(args.out)),
                    }
                    for r in runs
                ],
            },
            indent=1,
        )
    )
    todo = [r for r in runs if (read_status(r.dir(args.out)) or {}).get("status") != "ok"]
    groups = len({(r.setting, r.method) for r in todo})
    jobs, threads, stack = layout(groups, len(spec["seeds"]), args.cores, gpu_count())
    jobs = args.jobs or jobs
    threads = args.threads or (max(1, args.cores // jobs) if args.jobs else threads)
    stack = args.stack or stack
    work = chunks(todo, stack)
    print(
        f"[sweep] {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to "
        f"run as {jobs} jobs × {threads} threads, up to {stack} seeds stacked per job",
        flush=True,
    )
    if args.dry_run:
        for group in work:
            if len(group) == 1:
                print(" ".join(command(spec, group[0], group[0].dir(args.out))))
            else:
                print(" ".join(stacked_command(spec, group, args.out)))
        return 0
    lock = threading.Lock()
    start = time.perf_counter()

    def one(group: list[Run]) -> list[dict]:
        statuses = execute_stack(spec, group, args.out, threads)
        with lock:
            for run, status in zip(group, statuses, strict=True):
                print(
                    f"[sweep] {status['status']:<6} {run.setting}/{run.method}/seed{run.seed}: "
                    f"{status['epochs']} epochs in {status['seconds']:.1f} s, test acc "
                    + ("n/a" if status["test_acc"] is None else f"{status['test_acc']:.4f}")
                    + (f"  ({status['error']})" if status["error"] else ""),
                    flush=True,
                )
        return statuses

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = [status for statuses in pool.map(one, work) for status in statuses]
    wall = time.perf_counter() - start
    epochs = sum(s["epochs"] or 0 for s in done)
    failed = [s for s in done if s["status"] != "ok"]
    results = write_results(args.out, runs)
    rate = epochs / wall if wall > 0 else 0.0
    print(
        f"[sweep] {len(done) - len(failed)} ok, {len(failed)} failed; {epochs} seed-epochs in "
        f"{wall:.1f} s = {rate:.3f} seed-epochs/s ({jobs} jobs × {threads} threads, up to "
        f"{stack} seeds stacked)\n"
        f"[sweep] results: {results}\n[sweep] report: python tools/report.py {args.out}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
