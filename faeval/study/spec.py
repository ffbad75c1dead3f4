"""A sweep's YAML: loaded, overridden from the command line, and checked whole before any run.

    base: ../some_experiment.yaml        # a `faeval fit` config, relative to this file
    seeds: [0, 1, 2]
    methods: [BP, FA, DFA]               # FrozenBlocks is added: (d) needs it per seed
    settings:                            # optional; one setting "default" without it
      d256: {model.backbone.d_hidden: 256}
    args: ["--trainer.max_epochs", "5"]  # optional, passed to every run
    protocol: {every_n_epochs: 5, settings: {null_draws: 8}}  # Protocol callback; false: off
    slurm: {partition: gpu, time: 120}   # optional: --executor slurm's resources

``check_runs`` parses every (setting, method)'s options as ``faeval fit`` would, before
anything starts: a spec with a mistake is refused with one line per problem, naming it.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import warnings
from pathlib import Path

import yaml

from faeval.errors import ConfigError
from faeval.study.plan import Run, cli_value, fit_args

#: The keys a sweep YAML may hold.
SPEC_KEYS = ("base", "seeds", "methods", "settings", "args", "protocol", "slurm")


def load_spec(
    path: Path,
    seeds: str | None = None,
    methods: str | None = None,
    sets: list[str] | None = None,
) -> dict:
    """The sweep YAML, with the command line's overrides on top, checked.

    ``base`` is resolved against the spec's own folder.

    Args:
        path: the YAML file.
        seeds: replaces ``seeds`` (``"0-9"``, ``"0,2,5-7"``).
        methods: replaces ``methods`` (``"DFA,FA"``).
        sets: ``KEY=VALUE`` options added last to every run (``trainer.max_epochs=2``; the
            value is read as YAML).

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, missing or malformed,
            a seed is given twice, a method is not one faeval knows.
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
    if seeds is not None:
        from faeval.cli.stacked import parse_seeds

        spec["seeds"] = parse_seeds(seeds)
    if methods is not None:
        spec["methods"] = [m for m in methods.replace(" ", "").split(",") if m]
    for key in ("seeds", "methods"):
        if not isinstance(spec.get(key), list) or not spec[key]:
            raise ConfigError(f"{path}: `{key}` must be a non-empty list, got {spec.get(key)!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in spec["seeds"]):
        raise ConfigError(f"{path}: `seeds` must be integers, got {spec['seeds']!r}")
    twice = sorted({s for s in spec["seeds"] if spec["seeds"].count(s) > 1})
    if twice:
        raise ConfigError(
            f"{path}: `seeds` names {', '.join(map(str, twice))} twice; each seed is one run"
        )
    check_methods(path, spec["methods"])
    settings = spec.get("settings")
    if settings is not None and not (
        isinstance(settings, dict)
        and settings
        and all(isinstance(v, dict) for v in settings.values())
    ):
        raise ConfigError(
            f"{path}: `settings` must map names to option dicts, e.g. "
            "{d256: {model.backbone.d_hidden: 256}}"
        )
    if spec.get("args") is not None and not isinstance(spec["args"], list):
        raise ConfigError(
            f"{path}: `args` must be a list of command-line words, got {spec['args']!r}"
        )
    if sets:  # last on every run's command line: they win over the settings and the args
        words = [w for k, v in map(parse_set, sets) for w in (f"--{k}", cli_value(v))]
        spec["args"] = [*(spec.get("args") or []), *words]
    if spec.get("protocol") not in (None, False) and not isinstance(spec["protocol"], dict):
        raise ConfigError(f"{path}: `protocol` must be a mapping of Protocol options or false")
    if spec.get("base") is not None:
        base = (path.parent / str(spec["base"])).resolve()
        if not base.is_file():
            raise ConfigError(
                f"{path}: base config {spec['base']} not found (looked for {base}: a base is "
                "relative to the spec's folder)"
            )
        spec["base"] = str(base)
    return spec


def parse_set(item: str) -> tuple[str, object]:
    """``"trainer.max_epochs=2"`` -> ("trainer.max_epochs", 2) (the value read as YAML).

    Raises:
        ConfigError: no ``=``, or an empty key.
    """
    key, eq, value = item.partition("=")
    key = key.strip().removeprefix("--")
    if not eq or not key:
        raise ConfigError(f"--set takes KEY=VALUE (e.g. trainer.max_epochs=2), got {item!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def check_methods(path: Path, methods: list) -> None:
    """Each method is one faeval knows, or a class path.

    Raises:
        ConfigError: naming the unknown method and the known ones.
    """
    from faeval.cli import known_names  # loads torch: only when a spec is checked

    known = known_names()["model"]
    for method in methods:
        if "." not in str(method) and method not in known:
            close = difflib.get_close_matches(str(method), known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"{path}: unknown method {method!r}; {hint}(methods: {', '.join(known)}, or a "
                "class path)"
            )


def check_runs(spec: dict, runs: list[Run]) -> list[str]:
    """Every (setting, method)'s ``faeval fit`` options parsed as ``faeval fit`` parses them
    (class paths resolved, option names and types checked), nothing built or run.

    Returns:
        One line per problem, naming the setting and method, empty when all parse.
    """
    from faeval.cli.lightning import check_arguments

    problems = []
    seen = set()
    for run in runs:
        if (run.setting, run.method) in seen:
            continue
        seen.add((run.setting, run.method))
        err = io.StringIO()
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            # LightningCLI warns that args= came with a command line: the sweep's own.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            try:
                check_arguments(["fit", *fit_args(spec, run)])
                code = 0
            except SystemExit as exit:
                code = exit.code
        if code:
            text = " ".join(line.strip() for line in err.getvalue().strip().splitlines())
            why = text.removeprefix("faeval: error: ") or f"exit code {code}"
            problems.append(f"setting {run.setting!r}, method {run.method}: {why}")
    return problems
