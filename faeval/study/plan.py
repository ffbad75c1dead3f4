"""What a sweep runs: its runs (setting × method × seed), their folders and their commands.

Each run lives in ``DIR/runs/<setting>/<method>/seed<S>/``; the seeds of a (setting, method)
stacked in one process keep their stack's own folder in ``DIR/stacks/<setting>/<method>/``.
Pure Python (no torch).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from faeval.runs import folder_args

#: The depth baseline of diagnostic (d): every sweep trains it per setting and seed.
FROZEN = "FrozenBlocks"


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


def fit_args(spec: dict, run: Run) -> list[str]:
    """The ``faeval fit`` options of a run's setting and method (no seed, no folder): what the
    sweep checks before it starts anything (``faeval.study.spec.check_runs``)."""
    cmd = []
    if spec.get("base"):
        cmd += ["--config", str(spec["base"])]
    cmd += ["--model", run.method]
    for key, value in run.overrides:
        cmd += [f"--{key}", cli_value(value)]
    cmd += [str(a) for a in spec.get("args") or []]
    protocol = spec.get("protocol", {})
    if protocol is not False:
        cmd += ["--trainer.callbacks+=Protocol"]
        for key, value in flat_options(protocol or {}):
            cmd += [f"--trainer.callbacks.{key}", cli_value(value)]
    return cmd


def fit_command(spec: dict, run: Run, seed_args: list[str]) -> list[str]:
    """``faeval fit`` of a run's setting and method, seeded by ``seed_args``."""
    return [sys.executable, "-m", "faeval", "fit", *fit_args(spec, run), *seed_args]


def command(spec: dict, run: Run, run_dir: Path) -> list[str]:
    """The ``faeval fit`` command line of one run, logging straight into ``run_dir``."""
    cmd = fit_command(spec, run, ["--seed_everything", str(run.seed)])
    return [*cmd, "--trainer.default_root_dir", str(run_dir), *folder_args(run_dir)]


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


#: A run's (or a stack's) checkpoint to continue from.
LAST_CKPT = Path("checkpoints") / "last.ckpt"
#: A stack's record in its folder (``faeval.cli.stacked.STACK_FILE``; not imported: torch).
STACK_FILE = "stack.json"
