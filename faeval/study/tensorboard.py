"""TensorBoard for a study: one aggregate run per (setting, method), methods compared at a glance.

Usage (the sweep calls it at its end; ``faeval report DIR`` writes it too):

    from faeval.study.tensorboard import write_method_runs
    write_method_runs("sweeps/fmnist_reference")      # -> DIR/tensorboard
    tensorboard --logdir sweeps/fmnist_reference/tensorboard    # the study, by method
    tensorboard --logdir sweeps/fmnist_reference/runs           # every seed

A sweep of 4 methods × 10 seeds drawn run by run is 40 lines per chart in 40 colours: methods
cannot be told apart and TensorBoard's default smoothing (0.6) bends every multiline chart.
Here each (setting, method) is one run, ``DIR/tensorboard/<setting>/<method>/``, whose every
series is, at x = epoch, the median over the method's seeds of a faeval series (the tag the
runs log, ``log10/h_L``), with the seeds' minimum and maximum beside it (``log10/h_L/seed_min``,
``…/seed_max``). The layout draws them as margin charts, which TensorBoard does not smooth:
one line per method, its band the seeds' range. ``DIR/tensorboard/<setting>/ref/`` holds the
floor of (b) and the threshold of (a) once, as a run of their own. A chart is laid out only
where some method has its series (no empty protocol or feedback-weight charts).

The folder lies outside ``DIR/runs/`` (where ``faeval report`` and ``load_sweep`` look for
runs), and evaluation folders (``RUN/eval/…``) and the audit's baselines
(``RUN/frozen_baseline/``) lie inside the runs: ``--logdir DIR/tensorboard`` shows neither.
With ``--logdir DIR/runs`` the regex ``seed\\d+$`` in the run selector keeps only the seeds.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from faeval.runlog import RunLog, epoch_scalars, protocol_scalars, sweep_runs

#: Where the aggregate runs go, inside the sweep's folder.
STUDY_TB = "tensorboard"
#: The run of the reference lines, beside the methods of a setting.
REF_RUN = "ref"
#: The suffixes of a series' seed range.
LOW, HIGH = "/seed_min", "/seed_max"

#: The study's first category: one margin chart per quantity, a line per method.
GLANCE = "faeval study: methods compared (median of seeds, band: seed min–max; x = epoch)"
GLANCE_CHARTS = {
    "log10 ‖h_L‖": "log10/h_L",
    "log10 ‖g_L‖ (ref: the floor of (b))": "log10/g_L",
    "log10 max growth of ‖h_l‖ (ref: the threshold of (a))": "log10/growth",
    "deep cos(a_l, g_l), mean over l = 1..L": "diag/cos_deep",
    "Mode 2: deep cos − top of the null band (> 0 clears it)": "protocol/clearance_deep",
    "ρ deep (perturbation)": "protocol/rho_deep",
    "test accuracy": "test/acc",
}
#: Per-layer charts: one margin chart per layer, a line per method.
PER_LAYER = {
    "log10 ‖h_l‖": "log10/h_norm",
    "log10 ‖g_l‖": "log10/g_norm",
    "cos(a_l, g_l)": "diag/cos",
    "log10 distance from backprop": "log10/credit_error",
}
PER_LAYER_CATEGORY = "faeval study: per layer, methods compared (l = 0 is the embedding)"


def run_scalars(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per epoch, the finite scalars one run logs to TensorBoard (faeval's own view of its
    rows: ``epoch_scalars``, ``protocol_scalars``), with ``test/acc``, ``diag/cos_deep`` and
    the Mode 2 clearance (deep cos − the null band's top at ``NULL_BAND_SIGMAS``) added."""
    log = RunLog(run_dir)
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for row in log.rows():
        scalars = epoch_scalars(row)
        scalars["test/acc"] = row.get("test/acc")
        scalars["diag/cos_deep"] = row.get("cos_deep")
        out[row["epoch"]].update(scalars)
    for row in log.protocol_rows():
        scalars = protocol_scalars(row)
        if "protocol/cos_deep" in scalars:
            scalars["protocol/clearance_deep"] = (
                scalars["protocol/cos_deep"] - scalars["protocol/null_deep_upper"]
            )
        out[row["epoch"]].update(scalars)
    return {
        epoch: {
            k: float(v)
            for k, v in scalars.items()
            if not k.startswith("ref/") and isinstance(v, (int, float)) and math.isfinite(v)
        }
        for epoch, scalars in out.items()
    }


def aggregate(runs: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """Per epoch and tag, the median over the runs that have it, and the min and max
    (``tag + LOW``, ``tag + HIGH``)."""
    values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for epoch, scalars in run.items():
            for tag, value in scalars.items():
                values[epoch][tag].append(value)
    return {
        epoch: {
            key: stat
            for tag, vals in tags.items()
            for key, stat in (
                (tag, statistics.median(vals)),
                (tag + LOW, min(vals)),
                (tag + HIGH, max(vals)),
            )
        }
        for epoch, tags in values.items()
    }


def margin(tag: str) -> list:
    return ["Margin", [tag, tag + LOW, tag + HIGH]]


def study_layout(tags: set[str]) -> dict[str, dict[str, list]]:
    """The study's custom-scalar layout over the series present in ``tags``: the glance
    category first, then one chart per layer; charts without a series are left out."""
    glance = {title: margin(tag) for title, tag in GLANCE_CHARTS.items() if tag in tags}
    layers: dict[str, list] = {}
    for title, family in PER_LAYER.items():
        present = sorted(
            int(t.rsplit("/l", 1)[1])
            for t in tags
            if t.startswith(f"{family}/l") and t.rsplit("/l", 1)[1].isdigit()
        )
        for layer in present:
            layers[f"{title}, l = {layer}"] = margin(f"{family}/l{layer}")
    layout = {GLANCE: glance, PER_LAYER_CATEGORY: layers}
    return {category: charts for category, charts in layout.items() if charts}


def write_method_runs(sweep_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes one aggregate TensorBoard run per (setting, method) of a sweep, and the ``ref``
    run of the reference lines (see the module docstring).

    Runs that wrote no rows are left out; every run of the method that wrote rows counts,
    finished or not. Rewriting replaces the previous aggregate.

    Args:
        sweep_dir: the sweep's folder (``faeval sweep --out``).
        out: where the runs go; default ``sweep_dir/tensorboard``.

    Returns:
        the folder to pass to ``tensorboard --logdir``.

    Raises:
        FileNotFoundError: ``sweep_dir`` has no ``runs/`` folder.
    """
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    from faeval.callbacks.tensorboard import write_layout_dict

    root = Path(out) if out is not None else Path(sweep_dir) / STUDY_TB
    by_method: dict[tuple[str, str], list] = defaultdict(list)
    refs: dict[str, dict[str, float]] = defaultdict(dict)
    for run in sweep_runs(sweep_dir):
        scalars = run_scalars(run.dir)
        if scalars:
            by_method[(run.setting, run.method)].append(scalars)
        for row in RunLog(run.dir).rows()[-1:]:
            for key, tag in (("grad_floor", "log10/g_L"), ("growth_threshold", "log10/growth")):
                if isinstance(row.get(key), (int, float)) and row[key] > 0:
                    refs[run.setting][tag] = math.log10(row[key])
    if root.is_dir():
        shutil.rmtree(root)
    tags: set[str] = set()
    for (setting, method), runs in sorted(by_method.items()):
        with SummaryWriter(log_dir=str(root / setting / method)) as writer:
            for epoch, scalars in sorted(aggregate(runs).items()):
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, global_step=epoch)
                    tags.add(tag)
    for setting, lines in refs.items():
        epochs = sorted({e for (s, _), runs in by_method.items() if s == setting for r in runs
                         for e in r})  # fmt: skip
        with SummaryWriter(log_dir=str(root / setting / REF_RUN)) as writer:
            for tag, value in lines.items():
                for epoch in epochs:  # a flat line over the methods' epochs
                    for key in (tag, tag + LOW, tag + HIGH):
                        writer.add_scalar(key, value, global_step=epoch)
    layout = study_layout(tags)
    if layout:
        first = sorted(by_method)[0]
        # TensorBoard reads the layout of every run; one copy, in the first run, suffices.
        with SummaryWriter(log_dir=str(root / first[0] / first[1])) as writer:
            write_layout_dict(writer, layout)
    return root


def study_message(root: Path) -> str:
    """The line that says how to open the study (the Custom Scalars tab directly)."""
    return (
        f"[faeval] study view: tensorboard --logdir {root}, then open "
        "http://localhost:6006/#custom_scalars (one run per method: the median of its seeds, "
        "band min–max)"
    )
