"""The run log: what a run folder holds, row by row, and the figures derived from its rows.

One home for the schema of the two JSON-lines files every run writes, their names, writing
and reading them, and the derived figures (growth, flags, the deep-layer mean) that the
callbacks, ``faeval audit``, the verdicts, the sweep and the report all use. Pure Python: it
imports neither torch nor Lightning, so a log is read and judged without either.

Files of a run folder:
    diagnostics.jsonl   one ``EpochRow`` per measured epoch (row 0 is the initialisation)
    protocol.jsonl      one ``ProtocolRow`` per pass of the protocol's heavier pieces

A sweep (``faeval sweep``) keeps its runs in ``runs/<setting>/<method>/seed<S>/``;
``load_sweep`` reads every row of every run in one call.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

if TYPE_CHECKING:
    import pandas

    from faeval.diagnostics.layers import LayerFigures

ROWS_FILE = "diagnostics.jsonl"
PROTOCOL_FILE = "protocol.jsonl"

#: The role of the run that diagnostic (d) compares every method against (FrozenBlocks).
DEPTH_BASELINE = "depth_baseline"
#: The role of every other run.
METHOD = "method"
#: Width of the null band drawn in TensorBoard, in null standard deviations (the verdict's
#: own width is ``Thresholds.null_sigmas``, 2 by default).
NULL_BAND_SIGMAS = 2.0


class EpochRow(TypedDict, total=False):
    """One row of ``diagnostics.jsonl``: the per-layer figures of one epoch (l = 0..L).

    Keys: ``epoch`` (epochs completed, 0 = initialisation), ``step``, ``method`` (class
    name), ``role`` (``method`` or ``depth_baseline``), ``seed``; ``train/loss``,
    ``test/acc``, ``test/loss`` (None at row 0); ``h_norm``, ``g_norm`` (mean per-sample
    L2 norms), ``cos`` (cos(a_l, g_l), None where unmeasurable), ``h_ratio``
    (‖h_l‖/‖h_{l-1}‖, l = 1..L), ``growth`` (max_l ‖h_l‖ / ‖h_l‖ at init), ``h_L``, ``g_L``,
    ``floor_hit`` (diagnostic (b)), ``nonfinite``, ``cos_l0``, ``cos_deep`` (mean over
    l = 1..L), ``gamma`` (Γ, mean over every layer), ``probe_loss``, ``probe_acc``,
    ``grad_floor`` and ``growth_threshold`` (the thresholds the pass flagged against),
    ``seconds`` (cost of the pass).

    How far the credit is from backprop's (the verdicts' "backprop in disguise" note):
    ``credit_error`` (per layer, ‖a_l − c_l·∂ℓ_i/∂h_l‖ / ‖c_l·∂ℓ_i/∂h_l‖ over the probe in
    float64, None where unmeasurable like ``cos``) and ``credit_scale`` (c_l, the best single
    factor: 1 when a_l is backprop's gradient itself).

    Layer-wise feedback methods only (BioTorch's two metrics, per layer whose backward uses
    a feedback matrix B in place of its weight W): ``feedback_layers`` (the layers' module
    names in the backbone), ``feedback_angle`` (the angle between W and B flattened, in
    degrees) and ``feedback_norm_ratio`` (‖B‖ / ‖W‖).
    """

    epoch: int
    step: int
    method: str
    role: str
    seed: int | None
    h_norm: list[float]
    g_norm: list[float]
    cos: list[float | None]
    h_ratio: list[float]
    growth: float
    h_L: float
    g_L: float
    floor_hit: bool
    nonfinite: bool
    cos_l0: float | None
    cos_deep: float | None
    gamma: float | None
    probe_loss: float
    probe_acc: float
    grad_floor: float
    growth_threshold: float
    seconds: float
    credit_error: list[float | None]
    credit_scale: list[float]
    feedback_layers: list[str]
    feedback_angle: list[float]
    feedback_norm_ratio: list[float]


class ProtocolRow(TypedDict, total=False):
    """One row of ``protocol.jsonl``: the heavier pieces of the protocol at one epoch.

    Keys: ``epoch``, ``step``, ``method``; ``null`` (``NullBandFigures`` fields, or None
    with the reason in ``null_note``), ``rho`` (``PerturbationFigures`` fields),
    ``stability`` (``StabilityFigures`` fields, or None with ``stability_note``),
    ``has_feedback``, ``seconds`` (per piece), ``epoch_seconds`` (the training epoch's cost).
    """

    epoch: int
    step: int
    method: str
    null: dict[str, Any] | None
    null_note: str
    rho: dict[str, Any]
    stability: dict[str, Any] | None
    stability_note: str
    has_feedback: bool
    seconds: dict[str, float]
    epoch_seconds: float


def measured(value: Any) -> bool:
    """Whether a logged figure is a number that can be trusted (not None, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: float | None, spec: str = ".3g") -> str:
    """A logged figure as text: ``n/a`` where it is unmeasured (None)."""
    return "n/a" if value is None else format(value, spec)


def mean_measured(values: Sequence[float | None]) -> float | None:
    """The mean of ``values``, or None when there are none or any one is unmeasured.

    The one rule for averaging figures over layers: an average that silently dropped an
    unmeasurable layer would look valid while hiding it.
    """
    if not values or not all(measured(v) for v in values):
        return None
    return math.fsum(values) / len(values)


def deep_mean(per_layer: Sequence[float | None]) -> float | None:
    """The mean over the deep layers l = 1..L of a per-layer figure (``mean_measured`` rule)."""
    return mean_measured(per_layer[1:])


def mean_std(values: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and sample std of the measured values (std 0 for one value); None for none."""
    vals = [v for v in values if measured(v)]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def summarize(fig: LayerFigures, init_h_norm: Sequence[float], grad_floor: float) -> dict:
    """The derived part of an epoch row from one diagnostic pass (pure function).

    Cosines are replaced by None where they cannot be trusted: every layer while the
    gradient floor (diagnostic (b): ‖g_L‖ < grad_floor or non-finite) fires, and any layer
    whose own ‖g_l‖ is under the floor.
    """
    g_last = fig.g_norm[-1]
    floor_hit = not (math.isfinite(g_last) and g_last >= grad_floor)
    cos = [
        None if floor_hit or not g >= grad_floor else c
        for c, g in zip(fig.cos, fig.g_norm, strict=True)
    ]
    growth = [h / h0 for h, h0 in zip(fig.h_norm, init_h_norm, strict=True)]
    # The credit's distance from backprop, unmeasurable where its cosine is (none logged by
    # figures without it).
    distance = [None if c is None else e for e, c in zip(fig.credit_error, cos, strict=False)]
    feedback = {}
    if fig.feedback_layers:
        feedback = {
            "feedback_layers": fig.feedback_layers,
            "feedback_angle": fig.feedback_angle,
            "feedback_norm_ratio": fig.feedback_norm_ratio,
        }
    return {
        "h_norm": fig.h_norm,
        "g_norm": fig.g_norm,
        "cos": cos,
        "h_ratio": [h / hp for hp, h in zip(fig.h_norm[:-1], fig.h_norm[1:], strict=True)],
        "growth": max(growth, key=lambda v: v if math.isfinite(v) else math.inf),
        "h_L": fig.h_norm[-1],
        "g_L": g_last,
        "floor_hit": floor_hit,
        "nonfinite": not all(math.isfinite(v) for v in [*fig.h_norm, *fig.g_norm]),
        "cos_l0": cos[0],
        "cos_deep": deep_mean(cos),
        "gamma": mean_measured(cos),
        "probe_loss": fig.loss,
        "probe_acc": fig.acc,
        "credit_error": distance,
        "credit_scale": fig.credit_scale,
        **feedback,
    }


def _scalar(value: float | None) -> float:
    return math.nan if value is None else float(value)


def log10(value: float | None) -> float:
    """log10 of a positive figure; NaN for zero, negative, unmeasured or non-finite ones."""
    return math.log10(value) if measured(value) and value > 0 else math.nan


def epoch_scalars(row: EpochRow) -> dict[str, float]:
    """The logger's view of an epoch row (unmeasured as NaN).

    ``diag/...``: the figures as they are. ``log10/...``: log10 of every norm, ratio and the
    growth, of the credit's distance from backprop and its scale, for charts that span
    orders of magnitude (TensorBoard's custom-scalar layouts have no log-scale switch; a
    distance of exactly 0, as BP's, and a scale ≤ 0 have no log10 and give NaN).
    ``ref/...``: the thresholds of diagnostics (a) and (b) on the log10 scale, drawn as
    reference lines beside the curves they judge.
    """
    out = {}
    for family in ("h_norm", "g_norm", "cos"):
        for l, v in enumerate(row[family]):
            out[f"diag/{family}/l{l}"] = _scalar(v)
    for l, v in enumerate(row["h_ratio"], start=1):
        out[f"diag/h_ratio/l{l}"] = v
    for key in ("h_L", "g_L", "growth", "probe_acc", "probe_loss"):
        out[f"diag/{key}"] = row[key]
    out["diag/floor"] = float(row["floor_hit"])
    for family in ("h_norm", "g_norm"):
        for l, v in enumerate(row[family]):
            out[f"log10/{family}/l{l}"] = log10(v)
    for l, v in enumerate(row["h_ratio"], start=1):
        out[f"log10/h_ratio/l{l}"] = log10(v)
    for key in ("h_L", "g_L", "growth"):
        out[f"log10/{key}"] = log10(row[key])
    norms = [out[f"log10/h_norm/l{l}"] for l in range(len(row["h_norm"]))]
    out["log10/h_min"], out["log10/h_max"] = min(norms), max(norms)
    if "grad_floor" in row:
        out["ref/log10_grad_floor"] = log10(row["grad_floor"])
    if "growth_threshold" in row:
        out["ref/log10_growth_threshold"] = log10(row["growth_threshold"])
    for family in ("credit_error", "credit_scale"):
        for l, v in enumerate(row.get(family, [])):
            out[f"diag/{family}/l{l}"] = _scalar(v)
            out[f"log10/{family}/l{l}"] = log10(v)
    layers = row.get("feedback_layers", [])
    for family in ("feedback_angle", "feedback_norm_ratio"):
        for name, v in zip(layers, row.get(family, []), strict=True):
            out[f"diag/{family}/{name}"] = v
    for name, v in zip(layers, row.get("feedback_norm_ratio", []), strict=True):
        out[f"log10/feedback_norm_ratio/{name}"] = log10(v)
    return out


def protocol_scalars(row: ProtocolRow) -> dict[str, float]:
    """The logger's view of a protocol row: ``protocol/...`` scalars (unmeasured as NaN)."""
    out: dict[str, float] = {}
    null = row.get("null")
    if null is not None:
        out["protocol/cos_deep"] = _scalar(null["deep"])
        out["protocol/null_deep_mean"] = _scalar(null["deep_mean"])
        out["protocol/null_deep_std"] = _scalar(null["deep_std"])
        # The null band at the default 2σ, drawn around the deep cosine.
        band = NULL_BAND_SIGMAS * out["protocol/null_deep_std"]
        out["protocol/null_deep_lower"] = out["protocol/null_deep_mean"] - band
        out["protocol/null_deep_upper"] = out["protocol/null_deep_mean"] + band
    rho = row["rho"]
    for layer, v in enumerate(rho["rho"]):
        out[f"protocol/rho/l{layer}"] = _scalar(v)
    for name, key in (
        ("rho_deep", "rho"),
        ("rho_positive_deep", "positive"),
        ("rho_negative_deep", "negative_mean"),
    ):
        out[f"protocol/{name}"] = _scalar(deep_mean(rho[key]))
    if row.get("stability"):
        out["protocol/stability"] = row["stability"]["credit"]
        out["protocol/stability_gradient"] = row["stability"]["gradient"]
    out["protocol/seconds"] = sum(row["seconds"].values())
    return out


#: The key of a row that lists the figures written as null because they were NaN or ±inf.
NONFINITE_KEY = "nonfinite_figures"


def strict_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row as strict JSON: every NaN or ±inf figure becomes null, and the row lists them
    under ``NONFINITE_KEY`` (``"h_norm[3]"``, ``"train/loss"``) so that a null says why."""
    bad: list[str] = []

    def clean(value: Any, name: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(name)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{name}.{k}" if name else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{name}[{i}]") for i, v in enumerate(value)]
        return value

    out = clean(row, "")
    if bad:
        out[NONFINITE_KEY] = sorted(set(bad) | set(row.get(NONFINITE_KEY) or []))
    return out


def json_line(row: dict[str, Any]) -> str:
    """One row as a line of strict JSON (``strict_row``): any JSON reader parses it."""
    return json.dumps(strict_row(row), allow_nan=False) + "\n"


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Appends one JSON row to a ``.jsonl`` file in a single write (creating the folder).

    A row is complete once its newline is written: a process killed in the middle of the
    write leaves a last line without one, which ``read_rows`` ignores. Non-finite figures
    are written as null and listed in the row (``strict_row``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json_line(row))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete JSON rows of a ``.jsonl`` file, in order ([] when absent).

    A last line without its newline is a row torn by a kill while writing: left out.
    """
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the part after the last newline is torn
    return [json.loads(line) for line in lines if line.strip()]


def keep_rows_through(path: Path, epoch: int) -> int:
    """Rewrites a ``.jsonl`` file with only its complete rows of epochs <= ``epoch``.

    For a run resumed from a checkpoint taken after epoch ``epoch``'s rows were written:
    rows of later epochs (work the checkpoint does not hold, which the resumed run redoes)
    and a torn last line go, so every epoch keeps one row. The file is replaced atomically.

    Returns:
        the number of rows dropped (a torn line counts as one).
    """
    if not path.is_file():
        return 0
    text = path.read_text()
    rows = read_rows(path)
    kept = [r for r in rows if r["epoch"] <= epoch]
    dropped = len(rows) - len(kept) + (not text.endswith("\n") and bool(text))
    if dropped:
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text("".join(json_line(r) for r in kept))
        os.replace(temp, path)
    return dropped


@dataclass(frozen=True)
class RunLog:
    """The log files of one run folder.

    Attributes:
        dir: the run folder (``config.yaml``, the two row files, events, ``checkpoints/``).
    """

    dir: Path

    @property
    def rows_path(self) -> Path:
        return Path(self.dir) / ROWS_FILE

    @property
    def protocol_path(self) -> Path:
        return Path(self.dir) / PROTOCOL_FILE

    def rows(self) -> list[EpochRow]:
        """Every epoch row, in the order written."""
        return read_rows(self.rows_path)

    def protocol_rows(self) -> list[ProtocolRow]:
        """Every protocol row, in the order written."""
        return read_rows(self.protocol_path)

    def last_row(self) -> EpochRow | None:
        rows = self.rows()
        return rows[-1] if rows else None

    def last_protocol(self) -> ProtocolRow | None:
        rows = self.protocol_rows()
        return rows[-1] if rows else None

    def append(self, row: EpochRow) -> None:
        append_row(self.rows_path, row)

    def append_protocol(self, row: ProtocolRow) -> None:
        append_row(self.protocol_path, row)


def is_depth_baseline(rows: Iterable[EpochRow]) -> bool:
    """Whether the rows are those of the depth baseline (FrozenBlocks) of diagnostic (d)."""
    return any(r.get("role") == DEPTH_BASELINE for r in rows)


#: Backbone options that say its size, shown in a budget (in this order, where set).
SIZE_OPTIONS = ("d_hidden", "d_model", "width", "num_blocks", "depth", "patch_size", "alpha")


@dataclass(frozen=True)
class Budget:
    """What a run was given to train on, from its ``config.yaml`` and its last row.

    Attributes:
        data: the data module's class name (``+ random targets`` for the control).
        backbone: the backbone's class name with its size options, e.g.
            ``ResMLP d_hidden=256 num_blocks=4``.
        epochs: epochs completed (the last row's epoch).
        batches_per_epoch: optimizer steps per epoch, None before the first epoch.
    """

    data: str
    backbone: str
    epochs: int
    batches_per_epoch: int | None


def run_budget(run_dir: str | Path) -> Budget:
    """The budget of a run folder (``unknown`` data and backbone without a config.yaml)."""
    import yaml  # jsonargparse's dependency; only budgets read configs

    config_file = Path(run_dir) / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    data = (config or {}).get("data") or {}
    model = ((config or {}).get("model") or {}).get("init_args") or {}
    data_name = str(data.get("class_path", "unknown")).rsplit(".", 1)[-1]
    if (data.get("init_args") or {}).get("random_targets"):
        data_name += " + random targets"
    last = RunLog(Path(run_dir)).last_row() or {}
    epochs = int(last.get("epoch") or 0)
    step = last.get("step")
    batches = step // epochs if epochs and isinstance(step, int) else None
    return Budget(data_name, describe_backbone(model.get("backbone")), epochs, batches)


def describe_backbone(config: Any) -> str:
    """``ResMLP d_hidden=256 num_blocks=4`` from a backbone's class-path config."""
    if not isinstance(config, dict) or "class_path" not in config:
        return "unknown" if config is None else str(config)
    args = config.get("init_args") or {}
    words = [str(config["class_path"]).rsplit(".", 1)[-1]]
    words += [f"{k}={args[k]}" for k in SIZE_OPTIONS if k in args]
    words += [f"{k}=false" for k in ("residual_add", "terminal_ln") if args.get(k) is False]
    return " ".join(words)


#: The folder of a sweep that holds its runs, ``<setting>/<method>/seed<S>/`` below it.
SWEEP_RUNS = "runs"


@dataclass(frozen=True)
class SweepRun:
    """One run folder of a sweep.

    Attributes:
        setting: the sweep's setting.
        method: the method as the sweep named it (a short name or a class path).
        seed: the run's seed.
        dir: the run folder.
    """

    setting: str
    method: str
    seed: int
    dir: Path


def sweep_runs(sweep_dir: str | Path) -> list[SweepRun]:
    """Every run folder of a sweep, by setting, method and seed.

    Raises:
        FileNotFoundError: no ``runs/`` folder in ``sweep_dir``.
    """
    root = Path(sweep_dir) / SWEEP_RUNS
    if not root.is_dir():
        raise FileNotFoundError(
            f"no {SWEEP_RUNS}/ folder in {sweep_dir}; pass the --out folder of faeval sweep"
        )
    found = []
    for d in root.glob("*/*/seed*"):
        seed = d.name.removeprefix("seed")
        if d.is_dir() and seed.lstrip("-").isdigit():
            found.append(SweepRun(d.parent.parent.name, d.parent.name, int(seed), d))
    return sorted(found, key=lambda r: (r.setting, r.method, r.seed))


@overload
def load_sweep(sweep_dir: str | Path, as_frame: Literal[False] = False) -> list[dict[str, Any]]: ...


@overload
def load_sweep(sweep_dir: str | Path, as_frame: Literal[True]) -> pandas.DataFrame: ...


def load_sweep(
    sweep_dir: str | Path, as_frame: bool = False
) -> list[dict[str, Any]] | pandas.DataFrame:
    """Every epoch row of every run of a sweep, in one call: one record per run and epoch.

    Each record is the run's ``diagnostics.jsonl`` row as written (``epoch``, ``method``
    (the class name), ``seed``, ``test/acc``, per-layer ``h_norm``, ``g_norm``, ``cos``
    lists, …), with ``setting`` and ``run_dir`` added, and ``method`` and ``seed`` taken
    from the folder where the row lacks them. Records come by setting, run folder, seed and
    epoch. Unfinished and failed runs contribute the rows they wrote.

    Args:
        sweep_dir: the sweep's folder (``faeval sweep --out``).
        as_frame: return a pandas ``DataFrame`` (one row per record; per-layer figures stay
            lists) instead of plain records; needs pandas (``pip install pandas``).

    Raises:
        FileNotFoundError: ``sweep_dir`` has no ``runs/`` folder.
        ImportError: ``as_frame`` without pandas installed.
    """
    records = []
    for run in sweep_runs(sweep_dir):
        for row in RunLog(run.dir).rows():
            record = {"setting": run.setting, "method": run.method, "seed": run.seed}
            record.update(row)
            record["run_dir"] = str(run.dir)
            records.append(record)
    if not as_frame:
        return records
    try:
        import pandas
    except ImportError:
        raise ImportError(
            "load_sweep(..., as_frame=True) needs pandas: pip install pandas (or "
            "faeval[pandas]); without it, load_sweep returns plain records"
        ) from None
    return pandas.DataFrame.from_records(records)
