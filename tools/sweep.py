"""Run a sweep: methods × seeds × settings from one YAML, one ``faeval fit`` process per run.

Usage:
    python tools/sweep.py configs/sweeps/fmnist_reference.yaml --out sweeps/fmnist_reference
    python tools/sweep.py SPEC.yaml --out DIR [--jobs N] [--dry_run]

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
recorded (status "failed", exit code, the end of its log) and the sweep goes on. Runs go side
by side as ``--jobs`` processes with cores // jobs threads each (OMP_NUM_THREADS); on two
cores two single-thread runs gave 1.4-1.6× the throughput of one two-thread run.

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


def command(spec: dict, run: Run, run_dir: Path) -> list[str]:
    """The ``faeval fit`` command line of one run, logging straight into ``run_dir``."""
    cmd = [sys.executable, "-m", "faeval", "fit"]
    if spec.get("base"):
        cmd += ["--config", str(spec["base"])]
    cmd += ["--model", run.method, "--seed_everything", str(run.seed)]
    for key, value in run.overrides:
        cmd += [f"--{key}", cli_value(value)]
    cmd += [str(a) for a in spec.get("args") or []]
    protocol = spec.get("protocol", {})
    if protocol is not False:
        cmd += ["--trainer.callbacks+=Protocol"]
        for key, value in flat_options(protocol or {}):
            cmd += [f"--trainer.callbacks.{key}", cli_value(value)]
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


def execute(spec: dict, run: Run, out: Path, threads: int) -> dict:
    """Runs one training process and records its status (never raises for a failed run)."""
    run_dir = run.dir(out)
    if run_dir.exists():  # an unfinished or failed earlier attempt: keep it, out of the way
        kept = Path(out) / "attempts" / run_dir.relative_to(Path(out) / "runs")
        kept = kept.with_name(f"{kept.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(run_dir, kept)
    run_dir.mkdir(parents=True)
    cmd = command(spec, run, run_dir)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    start = time.perf_counter()
    with (run_dir / "run.log").open("w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - start
    row = RunLog(run_dir).last_row() or {}
    error = ""
    if rc:
        tail = (run_dir / "run.log").read_text().strip().splitlines()[-3:]
        error = " | ".join(tail)[-500:]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("spec", type=Path, help="the sweep YAML")
    parser.add_argument("--out", type=Path, required=True, help="the sweep directory")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side")
    parser.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="cores to share out (threads per job = cores // jobs)",
    )
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
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
    threads = max(1, args.cores // args.jobs)
    print(
        f"[sweep] {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to "
        f"run as {args.jobs} jobs × {threads} threads",
        flush=True,
    )
    if args.dry_run:
        for r in todo:
            print(" ".join(command(spec, r, r.dir(args.out))))
        return 0
    lock = threading.Lock()
    start = time.perf_counter()

    def one(run: Run) -> dict:
        status = execute(spec, run, args.out, threads)
        with lock:
            print(
                f"[sweep] {status['status']:<6} {run.setting}/{run.method}/seed{run.seed}: "
                f"{status['epochs']} epochs in {status['seconds']:.1f} s, test acc "
                + ("n/a" if status["test_acc"] is None else f"{status['test_acc']:.4f}")
                + (f"  ({status['error']})" if status["error"] else ""),
                flush=True,
            )
        return status

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(one, todo))
    wall = time.perf_counter() - start
    epochs = sum(s["epochs"] or 0 for s in done)
    failed = [s for s in done if s["status"] != "ok"]
    results = write_results(args.out, runs)
    rate = epochs / wall if wall > 0 else 0.0
    print(
        f"[sweep] {len(done) - len(failed)} ok, {len(failed)} failed; {epochs} seed-epochs in "
        f"{wall:.1f} s = {rate:.3f} seed-epochs/s ({args.jobs} jobs × {threads} threads)\n"
        f"[sweep] results: {results}\n[sweep] report: python tools/report.py {args.out}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
