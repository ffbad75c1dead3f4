"""Turn a sweep directory into the verdict table, the standard-pair table and plots.

Usage:
    faeval report sweeps/fmnist_reference
    faeval report SWEEP_DIR [--out DIR] [--growth_threshold 50] [--grad_floor 1e-7]
        [--stability_threshold 0.1] [--margin 0.02] [--null_sigmas 2] [--reference_epochs 100]

Reads the runs that ``faeval sweep`` wrote (DIR/runs/<setting>/<method>/seed<S>/) and
judges each from its logs alone (diagnostics.jsonl, protocol.jsonl): nothing is re-run.
Writes, in --out (default: the sweep directory):
    report.md    provenance (faeval version and commit, Python, torch, Lightning, CPU, GPU,
                 the sweep's wall time); the budget of each setting (data set, backbone,
                 epochs, batches per epoch, seeds), with a warning where it is shorter than
                 the reference's; per setting the verdict table (per method, each diagnostic
                 PASS/FIRES/MIXED across seeds with the figure that decided it: for (d) and
                 Mode 2 the mean of the per-seed margin or clearance with its 95% interval,
                 for the others the range over seeds; each rule stated apart), how sure
                 (d) and Mode 2 are, the standard-pair table (accuracy and margin as mean
                 [95% CI], Γ and cosines as mean ± std), the compute per method (wall
                 seconds per run from the runs' status.json, epochs trained) and the plots
    report.tex   the verdict and standard-pair tables as booktabs tabular fragments
    tensorboard/ one TensorBoard run per (setting, method): the median of its seeds and
                 their range (faeval.study.tensorboard; tensorboard --logdir DIR/tensorboard)
    report.json  the same, per run and per method
    <setting>_curves.{png,pdf}    log10 ‖h_L‖, log10 ‖g_L‖ (with the floor), deep cosine
                                  and test accuracy over epochs: per method the median over
                                  seeds and the seeds' min–max band
    <setting>_cosine.{png,pdf}    per-layer cos(a_l, g_l) at the last epoch, each method
                                  with its null band (fresh feedback draws, mean ± k·std)
    <setting>_margin.{png,pdf}    (d) as decided: each seed's margin over the FrozenBlocks
                                  run of the same seed, and the mean with its 95% interval
Every figure's title states the budget; the PDFs are vector files for a paper.
Prints the tables, the diverged runs apart, and which planned runs are missing, failed or
interrupted: an empty, partial or mixed sweep directory is reported as far as it goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from faeval.errors import FaevalError
from faeval.protocol.intervals import Interval, paired_interval
from faeval.protocol.render import interval_text, latex_tabular, latex_verdicts, study_table
from faeval.protocol.settings import REFERENCE_EPOCHS, Thresholds
from faeval.protocol.verdicts import (
    DIAGNOSTICS,
    INTERVAL_KEYS,
    RunVerdict,
    SeedVerdict,
    judge_run,
    judge_seeds,
)
from faeval.runend import read_end
from faeval.runlog import (
    DEPTH_BASELINE,
    RunLog,
    is_depth_baseline,
    mean_std,
    measured,
    run_budget,
)
from faeval.study.provenance import compute, provenance, wall_span
from faeval.study.state import read_status, run_state
from faeval.study.tensorboard import STUDY_TB, study_message, write_method_runs

DPI = 200
#: Figure sizes in inches: a paper's text width is about 7 in, a column about 3.5 in, so the
#: fonts below print at their own size.
SIZES = {"curves": (7.2, 5.6), "cosine": (5.4, 3.8), "margin": (5.4, 3.8)}
FORMATS = ("png", "pdf")
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 9,
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text, editable and searchable
}
MARKERS = "osD^vPX*"
#: The budget warning's mark in a verdict cell.
SHORT = " ⚠"


def discover(sweep: Path) -> tuple[list[dict], list[dict]]:
    """Planned runs (from sweep.json, else what is on disk) and their states.

    A run's state is what it recorded (``faeval.study.state.run_state``: its ``end.json``),
    never its exit code.

    Returns:
        (runs, problems): every run dir found or planned, with ``state`` in ok / diverged /
        interrupted / failed / missing, ``ended`` (the run's own words) and ``epochs``;
        problems are those neither ok nor diverged (diverged runs are listed apart).
    """
    planned = (
        json.loads((sweep / "sweep.json").read_text())["runs"]
        if (sweep / "sweep.json").is_file()
        else []
    )
    seen = {(r["setting"], r["method"], int(r["seed"])) for r in planned}
    for d in sorted(sweep.glob("runs/*/*/seed*")):
        seen.add((d.parent.parent.name, d.parent.name, int(d.name.removeprefix("seed"))))
    runs = []
    for setting, method, seed in sorted(seen):
        d = sweep / "runs" / setting / method / f"seed{seed}"  # relocatable: not the plan's path
        end = read_end(d) or {}
        status = read_status(d) or {}
        runs.append(
            {
                "setting": setting,
                "method": method,
                "seed": seed,
                "run_dir": d,
                "state": run_state(d),
                "ended": end.get("reason", ""),
                "epochs": end.get("epochs"),
                "error": status.get("error", ""),
            }
        )
    return runs, [r for r in runs if r["state"] not in ("ok", "diverged")]


#: What the report's list of diverged runs means.
DIVERGED_NOTE = (
    "A figure of these runs went NaN or inf and training stopped there: a result of the "
    "method, not a missing run. They are left out of the tables and plots below (their "
    "figures are not numbers); the sweep does not train them again."
)


def diverged_lines(runs: list[dict]) -> list[str]:
    """One line per diverged run: where, after how many epochs, and why."""
    return [
        f"{r['setting']}/{r['method']}/seed{r['seed']}: diverged"
        + (f" after {r['epochs']} epochs" if r["epochs"] is not None else "")
        + (f" ({r['ended']})" if r["ended"] else "")
        for r in runs
        if r["state"] == "diverged"
    ]


def judge_setting(runs: list[dict], thresholds: Thresholds) -> list[tuple[dict, RunVerdict]]:
    """Each finished run's verdict, (d) against the FrozenBlocks run of the same seed."""
    for r in runs:
        r["rows"] = RunLog(r["run_dir"]).rows()
    frozen = {
        r["seed"]: r["rows"][-1]["test/acc"]
        for r in runs
        if is_depth_baseline(r["rows"]) and r["rows"][-1].get("test/acc") is not None
    }
    return [
        (
            r,
            judge_run(
                r["rows"],
                RunLog(r["run_dir"]).last_protocol(),
                r["method"],
                frozen.get(r["seed"]),
                thresholds,
                r["seed"],
            ),
        )
        for r in runs
    ]


def setting_budget(runs: list[dict]) -> dict:
    """The budget of a setting's finished runs: data set, backbone, epochs, batches per
    epoch and seeds (each a value, or a range where runs differ)."""
    budgets = [run_budget(r["run_dir"]) for r in runs]

    def spread(values) -> str:
        vals = sorted({v for v in values if v is not None})
        if not vals:
            return "n/a"
        return str(vals[0]) if len(vals) == 1 else f"{vals[0]}–{vals[-1]}"

    return {
        "data": " / ".join(sorted({b.data for b in budgets})),
        "backbone": " / ".join(sorted({b.backbone for b in budgets})),
        "epochs": spread(b.epochs for b in budgets),
        "batches_per_epoch": spread(b.batches_per_epoch for b in budgets),
        "seeds": sorted({r["seed"] for r in runs}),
        "min_epochs": min((b.epochs for b in budgets), default=0),
    }


def budget_line(budget: dict, sep: str = " · ") -> str:
    """The budget in one line (the setting's head), or two with ``sep="\\n"`` (a title)."""
    seeds = ", ".join(str(s) for s in budget["seeds"])
    return (
        f"{budget['data']} · {budget['backbone']}{sep}{budget['epochs']} epochs × "
        f"{budget['batches_per_epoch']} batches per epoch · seeds {seeds}"
    )


def budget_dependent(sv: SeedVerdict) -> bool:
    """Whether a cross-seed verdict may change with a longer budget.

    (a) and (b) that have not fired may still fire (growth builds up, ‖g_L‖ falls late: the
    floor was crossed within 11 of the reference's 100 epochs); (a) that fired has fired
    for good (it judges the largest growth seen). (d) and Mode 2 may move either way as the
    method and its FrozenBlocks baseline train on.
    """
    if sv.status in ("N/A", "UNMEASURABLE") or sv.advisory:
        return False
    if sv.key in ("a", "b"):
        return sv.status != "FIRES"
    return True


def budget_warning(budget: dict, reference_epochs: int) -> str | None:
    """The warning for a budget shorter than the reference's, or None."""
    if budget["min_epochs"] >= reference_epochs:
        return None
    return (
        f"**Warning: short budget.** These runs trained {budget['epochs']} epochs, the "
        f"reference results {reference_epochs} (the study's CIFAR-10 runs, on which the "
        f"thresholds were set). Verdicts marked{SHORT} may change with the full budget: (a) "
        "and (b) that have not fired may still fire, (d) and Mode 2 may move either way."
    )


def pm(ms: tuple[float, float] | None, scale: float = 1.0, fmt: str = "{:.4f}") -> str:
    """``mean ± std`` (the sample std over seeds), or n/a."""
    if ms is None:
        return "n/a"
    return f"{fmt.format(scale * ms[0])} ± {fmt.replace('+', '').format(scale * ms[1])}"


#: The range a test accuracy can take: its interval is cut to it (three very different seeds
#: give a Student-t interval reaching below 0 or above 1, which no accuracy can).
ACCURACY_RANGE = (0.0, 1.0)


def mean_ci(
    values: list[float | None], bounds: tuple[float, float] | None = None
) -> Interval | None:
    """The mean over seeds of the measured ``values`` with its 95% Student-t interval (None
    for fewer than two), its ends cut to ``bounds`` where the quantity has a range."""
    vals = [v for v in values if measured(v)]
    iv = paired_interval(vals, 0.0)
    if iv is None or bounds is None:
        return iv
    low, high = bounds
    return dataclasses.replace(
        iv, low=min(max(iv.low, low), high), high=max(min(iv.high, high), low)
    )


def ci_text(
    values: list[float | None],
    scale: float = 1.0,
    spec: str = ".4f",
    bounds: tuple[float, float] | None = None,
) -> str:
    """``mean [low, high]`` (95% CI over seeds, cut to ``bounds``); the one value where there
    is one seed."""
    vals = [v for v in values if measured(v)]
    if not vals:
        return "n/a"
    iv = mean_ci(vals, bounds)
    if iv is None:
        return f"{scale * vals[0]:{spec}} (1 seed)"
    return f"{scale * iv.mean:{spec}} [{scale * iv.low:{spec}}, {scale * iv.high:{spec}}]"


#: The standard pair's columns, their statistic named in the header.
PAIR_HEAD = [
    "method",
    "seeds",
    "test acc, mean [95% CI]",
    "margin over FrozenBlocks (pp), mean [95% CI]",
    "Γ (all layers), mean ± std",
    "cos layer 0, mean ± std",
    "deep cos, mean ± std",
]


def pair_rows(by_method: dict[str, list[RunVerdict]]) -> tuple[list[list[str]], dict]:
    """The standard pair per method as table cells, and its numbers."""
    rows, numbers = [], {}
    for method, rvs in by_method.items():
        col = {
            k: [rv.pair[k] for rv in rvs] for k in ("acc", "gamma", "cos_l0", "cos_deep", "margin")
        }
        nums = {k: mean_std(v) for k, v in col.items()}
        unmeasured = sum(v is None for v in col["gamma"])
        gamma = pm(nums["gamma"], fmt="{:+.3f}")
        if unmeasured:
            gamma += f" ({unmeasured}/{len(rvs)} unmeasurable)"
        baseline = rvs[0].role == DEPTH_BASELINE
        margin = "n/a (baseline)" if baseline else ci_text(col["margin"], 100, "+.2f")
        rows.append(
            [
                method,
                str(len(rvs)),
                ci_text(col["acc"], bounds=ACCURACY_RANGE),
                margin,
                gamma,
                pm(nums["cos_l0"], fmt="{:+.3f}"),
                pm(nums["cos_deep"], fmt="{:+.3f}"),
            ]
        )
        numbers[method] = {
            k: None if v is None else {"mean": v[0], "std": v[1]} for k, v in nums.items()
        }
        for k, bounds in (("acc", ACCURACY_RANGE), ("margin", None)):
            iv = mean_ci(col[k], bounds)
            if numbers[method][k] is not None and iv is not None:
                numbers[method][k]["ci95"] = [iv.low, iv.high]
        numbers[method]["gamma_unmeasurable"] = unmeasured
    return rows, numbers


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        + ["| " + " | ".join(r) + " |" for r in rows]
    )


#: The epoch curves: panel title, how a row gives the value (None: not drawn), y label.
CURVES = (
    ("log10 ‖h_L‖ (mean per-sample L2)", lambda r: log10_or_none(r.get("h_L")), "log10 ‖h_L‖"),
    ("log10 ‖g_L‖ (true gradient at h_L)", lambda r: log10_or_none(r.get("g_L")), "log10 ‖g_L‖"),
    ("deep cos(a_l, g_l), mean over l = 1..L", lambda r: finite(r.get("cos_deep")), "deep cos"),
    ("test accuracy", lambda r: finite(r.get("test/acc")), "test accuracy"),
)


def finite(value) -> float | None:
    return float(value) if measured(value) else None


def log10_or_none(value) -> float | None:
    return math.log10(value) if measured(value) and value > 0 else None


def seed_band(runs, value) -> tuple[list[int], list[float], list[float], list[float], int]:
    """Per epoch, the median and the min and max over seeds of ``value(row)``.

    Returns:
        (epochs, median, low, high, seeds): epochs where at least one seed has a value.
    """
    per_epoch = defaultdict(list)
    for r, _ in runs:
        for row in r["rows"]:
            v = value(row)
            if v is not None:
                per_epoch[row["epoch"]].append(v)
    epochs = sorted(per_epoch)
    return (
        epochs,
        [statistics.median(per_epoch[e]) for e in epochs],
        [min(per_epoch[e]) for e in epochs],
        [max(per_epoch[e]) for e in epochs],
        len(runs),
    )


def plot_curves(judged, floor: float, title: str, path: Path) -> None:
    """log10 ‖h_L‖, log10 ‖g_L‖, the deep cosine and test accuracy over epochs: per method
    the median over seeds (line) and the seeds' min–max (band); the floor of (b) drawn."""
    fig, axes = plt.subplots(2, 2, figsize=SIZES["curves"], layout="constrained", sharex=True)
    for ax, (name, value, ylabel) in zip(axes.flat, CURVES, strict=True):
        for i, (method, runs) in enumerate(group(judged).items()):
            epochs, mid, low, high, n = seed_band(runs, value)
            if not epochs:
                continue
            color, baseline = f"C{i}", runs[0][1].role == DEPTH_BASELINE
            ax.plot(
                epochs,
                mid,
                color=color,
                ls="--" if baseline else "-",
                marker=MARKERS[i % len(MARKERS)],
                ms=3,
                label=f"{method}: median of {n} seeds, band min–max",
            )
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, lw=0)
        if ylabel == "log10 ‖g_L‖":
            ax.axhline(math.log10(floor), color="k", ls=":", lw=1, label=f"floor {floor:g} (b)")
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    save(fig, title, path)


def plot_cosine(judged, sigmas: float, title: str, path: Path) -> None:
    """Per-layer cosine at the last epoch, each method beside its own null band.

    FrozenBlocks is left out: its credit is BP's (cosine 1 everywhere) and would hide BP.
    Methods sit side by side at each layer, so equal values stay visible.
    """
    fig, ax = plt.subplots(figsize=SIZES["cosine"], layout="constrained")
    methods = [(m, runs) for m, runs in group(judged).items() if runs[0][1].role != DEPTH_BASELINE]
    for i, (method, runs) in enumerate(methods):
        color, marker = f"C{i}", MARKERS[i % len(MARKERS)]
        offset = 0.08 * (i - (len(methods) - 1) / 2)
        last = [r["rows"][-1]["cos"] for r, _ in runs if r["rows"]]
        band = null_band(runs)
        if band is not None:
            layers, mean, std, draws = band
            xs = [layer + offset for layer in layers]
            ax.fill_between(
                xs,
                [m - sigmas * s for m, s in zip(mean, std, strict=True)],
                [m + sigmas * s for m, s in zip(mean, std, strict=True)],
                color=color,
                alpha=0.15,
                lw=0,
                label=f"{method} null band (mean ± {sigmas:g}·std, {draws} fresh draws)",
            )
        if not last:
            continue
        layers = range(len(last[0]))
        stats = [mean_std([c[layer] for c in last if layer < len(c)]) for layer in layers]
        xs = [x for x, s in zip(layers, stats, strict=True) if s is not None]
        if not xs:
            ax.plot([], [], color=color, marker=marker, label=f"{method}: unmeasurable (floor)")
            continue
        ax.errorbar(
            [x + offset for x in xs],
            [stats[x][0] for x in xs],
            yerr=[stats[x][1] for x in xs],
            color=color,
            marker=marker,
            ms=4,
            capsize=2,
            label=method,
        )
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("layer l (0 = embedding)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cos(a_l, g_l) at the last epoch")
    ax.set_title("Per-layer credit cosine (mean ± std over seeds) and null bands")
    save(fig, title, path)


def null_band(runs) -> tuple[list[int], list[float], list[float], int] | None:
    """Per-layer null band of a method's runs (last protocol row): layers, mean, std, draws
    (each the mean over seeds); None when no run has one."""
    bands = [
        p["null"] for r, _ in runs if (p := RunLog(r["run_dir"]).last_protocol()) and p.get("null")
    ]
    if not bands:
        return None
    layers = list(range(min(len(b["null_mean"]) for b in bands)))
    mean = [statistics.fmean(b["null_mean"][layer] for b in bands) for layer in layers]
    std = [statistics.fmean(b["null_std"][layer] for b in bands) for layer in layers]
    return layers, mean, std, bands[0]["draws"]


def plot_margin(judged, margin: float, title: str, path: Path) -> None:
    """(d) as it is decided: each seed's margin over the FrozenBlocks run of the same seed
    (points) and, per method, their mean with its 95% Student-t interval (bar), against
    the threshold."""
    fig, ax = plt.subplots(figsize=SIZES["margin"], layout="constrained")
    methods = [(m, runs) for m, runs in group(judged).items() if runs[0][1].role != DEPTH_BASELINE]
    ax.axhline(0, color="k", lw=0.6)
    ax.axhline(
        100 * margin, color="k", ls="--", lw=1, label=f"threshold of (d): {100 * margin:g} pp"
    )
    for i, (_, runs) in enumerate(methods):
        color, marker = f"C{i}", MARKERS[i % len(MARKERS)]
        values = [100 * rv.pair["margin"] for _, rv in runs if measured(rv.pair["margin"])]
        if not values:
            continue
        ax.scatter([i - 0.12] * len(values), values, color=color, marker=marker, s=14, zorder=3)
        iv = mean_ci(values)
        if iv is not None:
            ax.errorbar(
                [i + 0.12], [iv.mean], yerr=[[iv.mean - iv.low], [iv.high - iv.mean]],
                color=color, marker="_", ms=10, capsize=4, lw=1.5,
            )  # fmt: skip
    ax.scatter([], [], color="0.4", s=14, label="one seed: acc − FrozenBlocks acc (same seed)")
    ax.errorbar([], [], yerr=[], color="0.4", marker="_", capsize=4, label="mean, 95% CI")
    ax.set_xticks(range(len(methods)), [m for m, _ in methods])
    ax.set_xlim(-0.6, max(len(methods), 1) - 0.4)
    ax.set_ylabel("margin over FrozenBlocks (pp)")
    ax.set_title("(d): paired margin per seed, mean and 95% Student-t interval")
    save(fig, title, path)


def save(fig, title: str, path: Path) -> None:
    """One legend below the axes (it never hides a curve), the budget as the figure's
    title; written as PNG at ``DPI`` and as a vector PDF (``path`` without suffix), closed."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(
            list(entries.values()), list(entries), loc="outside lower center", ncol=2, frameon=False
        )
    fig.suptitle(title)
    for fmt in FORMATS:
        fig.savefig(path.with_suffix(f".{fmt}"), dpi=DPI)
    plt.close(fig)


PAIR_NOTE = (
    "Statistics over seeds: test accuracy and the margin over FrozenBlocks (each seed against "
    "the FrozenBlocks run of the same seed) as mean [95% Student-t interval], an accuracy's "
    "cut to [0, 1]; Γ and the cosines as mean ± sample standard deviation."
)
CELL_NOTE = (
    "verdict; (d) and Mode 2: mean [95% CI] of the per-seed margin or clearance over the "
    "band; others: min ... max over seeds"
)


def latex_comment(text: str) -> str:
    """Text safe in a LaTeX comment line (no newline)."""
    return text.replace("\n", " ")


def compute_table(used: dict[str, dict]) -> str:
    """Markdown table of the compute per method (``provenance.compute``)."""
    if not used:
        return "No run has a status.json with its seconds (runs not written by faeval sweep)."
    rows = []
    for method, c in used.items():
        epochs = sorted(set(c["epochs"]))
        rows.append(
            [
                method,
                str(c["runs"]),
                ", ".join(str(e) for e in epochs),
                f"{c['median_seconds']:.1f} ({min(c['seconds']):.1f}–{max(c['seconds']):.1f})",
                f"{c['total_seconds']:.1f}",
            ]
        )
    head = ["method", "runs", "epochs trained", "wall s per run, median (min–max)", "total s"]
    return (
        markdown_table(head, rows)
        + "\n\nWall seconds of each run's process as the sweep measured them (status.json "
        "`seconds`), start-up and the protocol's passes included."
    )


def provenance_lines(made: dict) -> str:
    """The provenance as Markdown lines."""
    commit = made["faeval_commit"] or "not a git checkout"
    span = made.get("sweep_wall_seconds")
    return "\n".join(
        [
            f"- faeval {made['faeval']} (commit {commit}), Python {made['python']}, "
            f"torch {made['torch']}, lightning {made['lightning']}",
            f"- this report written {made['written']} on {made['host']}: CPU {made['cpu']}; "
            f"GPU {made['gpu']}",
            "- the sweep's wall time, first run's start to last run's end: "
            + ("n/a" if span is None else f"{span:.0f} s"),
        ]
    )


HOW_SURE = (
    "(d) and Mode 2 are judged across seeds by a 95% Student-t interval of a per-seed "
    "difference: the margin over the FrozenBlocks run of the same seed, and the deep "
    "cosine's clearance over the top of its own run's null band (ρ against its random "
    "control where there is no feedback draw). PASS: the interval lies above the threshold; "
    "FIRES: below it; MIXED: it contains the threshold, so these seeds do not settle it."
)


def group(judged) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for r, rv in judged:
        out[r["method"]].append((r, rv))
    # The depth baseline last, the methods by name.
    return dict(sorted(out.items(), key=lambda kv: (kv[1][0][1].role == DEPTH_BASELINE, kv[0])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="faeval report",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", type=Path, help="the sweep directory")
    parser.add_argument("--out", type=Path, default=None, help="default: the sweep directory")
    defaults = Thresholds()
    for name, value in defaults.as_dict().items():
        parser.add_argument(f"--{name}", type=float, default=value)
    parser.add_argument(
        "--reference_epochs",
        type=int,
        default=REFERENCE_EPOCHS,
        help="epochs of the reference results; shorter budgets are reported with a warning",
    )
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        print(
            f"report: error: no sweep folder at {args.sweep}; pass the --out folder of "
            "faeval sweep",
            file=sys.stderr,
        )
        return 2
    try:
        thresholds = Thresholds(**{k: getattr(args, k) for k in defaults.as_dict()})
    except FaevalError as err:
        print(f"report: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.sweep
    out.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update(STYLE)
    runs, problems = discover(args.sweep)
    finished = [r for r in runs if r["state"] == "ok"]
    settings = sorted({r["setting"] for r in finished})
    budgets = {s: setting_budget([r for r in finished if r["setting"] == s]) for s in settings}
    md = [
        f"# faeval sweep report: `{args.sweep}`",
        "",
        "Thresholds: " + ", ".join(f"`{k}={v:g}`" for k, v in thresholds.as_dict().items()),
        "",
    ]
    if budgets:
        md += [
            "| setting | data set | backbone | epochs | batches per epoch | seeds |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {s} | {b['data']} | {b['backbone']} | {b['epochs']} | "
            f"{b['batches_per_epoch']} | {', '.join(str(x) for x in b['seeds'])} |"
            for s, b in budgets.items()
        ]
        md.append("")
        short = [s for s, b in budgets.items() if budget_warning(b, args.reference_epochs)]
        if short:
            md += [
                f"**Warning: budget shorter than the reference's {args.reference_epochs} "
                f"epochs** in {', '.join(f'`{s}`' for s in short)}: verdicts marked{SHORT} "
                "may change with the full budget (see each setting).",
                "",
            ]
    made = provenance()
    made["sweep_wall_seconds"] = wall_span(finished)
    md += ["## Provenance", "", provenance_lines(made), ""]
    tex = [
        f"% faeval report of {latex_comment(str(args.sweep))}; needs \\usepackage{{booktabs}}",
        f"% {latex_comment(provenance_lines(made).replace(chr(10), ' '))}",
        "",
    ]
    report = {
        "sweep": str(args.sweep),
        "provenance": made,
        "thresholds": thresholds.as_dict(),
        "reference_epochs": args.reference_epochs,
        "settings": {},
        "problems": [{k: str(v) for k, v in p.items()} for p in problems],
    }
    diverged = diverged_lines(runs)
    report["diverged"] = diverged
    if diverged:
        md += ["## Diverged runs", "", DIVERGED_NOTE, ""]
        md += [f"- {line}" for line in diverged]
        md.append("")
    if problems:
        md += ["## Runs not reported", ""]
        md += [
            f"- {p['setting']}/{p['method']}/seed{p['seed']}: **{p['state']}**"
            + (f" ({p['error'] or p['ended']})" if p["error"] or p["ended"] else "")
            for p in problems
        ]
        md.append("")
    if not finished:
        md.append("No finished runs: nothing to judge yet.")
    for setting in settings:
        judged = judge_setting([r for r in finished if r["setting"] == setting], thresholds)
        by_method = {m: [rv for _, rv in v] for m, v in group(judged).items()}
        seeds = {m: judge_seeds(rvs) for m, rvs in by_method.items()}
        pair_cells, numbers = pair_rows(by_method)
        pairs = markdown_table(PAIR_HEAD, pair_cells)
        budget = budgets[setting]
        title = f"{setting}: {budget_line(budget, sep=chr(10))}"  # two lines
        warning = budget_warning(budget, args.reference_epochs)
        marks = {
            (m, k): SHORT
            for m, table in seeds.items()
            for k, sv in table.items()
            if warning and budget_dependent(sv)
        }
        sure = [
            text
            for m, table in seeds.items()
            for k in INTERVAL_KEYS
            if (text := interval_text(m, table[k]))
        ]
        names = {k: f"{setting}_{k}" for k in SIZES}
        plot_curves(judged, thresholds.grad_floor, title, out / names["curves"])
        plot_cosine(judged, thresholds.null_sigmas, title, out / names["cosine"])
        plot_margin(judged, thresholds.margin, title, out / names["margin"])
        used = compute([r for r, _ in judged])
        compute_md = compute_table(used)
        tex += [
            f"% setting {latex_comment(setting)}: {latex_comment(budget_line(budget))}",
            f"% verdicts across seeds (cells: {latex_comment(CELL_NOTE)})",
            latex_verdicts(seeds, marks),
            "",
            f"% standard pair, setting {latex_comment(setting)}",
            latex_tabular(PAIR_HEAD, pair_cells, "ll" + "r" * (len(PAIR_HEAD) - 2)),
            "",
        ]
        md += [f"## Setting `{setting}`", "", f"Budget: {budget_line(budget)}.", ""]
        md += [warning, ""] if warning else []
        md += ["### Verdicts (across seeds)", "", study_table(seeds, marks), ""]
        md += ["### How sure (across seeds)", "", HOW_SURE, ""]
        md += [f"- {text}" for text in sure] or ["- No interval: fewer than two seeds."]
        md += ["", "### Standard pair", "", PAIR_NOTE, "", pairs, ""]
        md += ["### Compute", "", compute_md, ""]
        for kind, name in names.items():
            files = " · ".join(f"[{fmt.upper()}]({name}.{fmt})" for fmt in FORMATS)
            md += [f"![{kind}]({name}.png)", "", files, ""]
        report["settings"][setting] = {
            "budget": budget,
            "budget_warning": warning,
            "runs": [{**rv.as_dict(), "run_dir": str(r["run_dir"])} for r, rv in judged],
            "methods": {
                m: {
                    "verdicts": {k: sv.as_dict() for k, sv in seeds[m].items()},
                    "budget_dependent": [k for (mm, k) in marks if mm == m],
                    "pair": numbers[m],
                    "compute": used.get(m),
                }
                for m in seeds
            },
            "how_sure": sure,
            "plots": {k: [f"{name}.{fmt}" for fmt in FORMATS] for k, name in names.items()},
        }
        print(
            f"== setting {setting}: {budget_line(budget)}\n"
            + (f"{warning}\n" if warning else "")
            + f"{study_table(seeds, marks)}\n\n"
            + "".join(f"{text}\n" for text in sure)
            + f"\n{pairs}\n",
            flush=True,
        )
        for name in names.values():
            print(f"[report] plot {out / name}.{{{','.join(FORMATS)}}}", flush=True)
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.tex").write_text("\n".join(tex) + "\n")
    if finished:  # the study's TensorBoard view: one run per method (faeval.study.tensorboard)
        print(study_message(write_method_runs(args.sweep, out / STUDY_TB)), flush=True)
    for line in diverged:
        print(f"[report] {line}", flush=True)
    for p in problems:
        print(
            f"[report] not reported: {p['setting']}/{p['method']}/seed{p['seed']} ({p['state']})",
            flush=True,
        )
    print(
        f"[report] {len(finished)} runs judged; written {out / 'report.md'}, "
        f"{out / 'report.json'} and the plots ({', '.join(DIAGNOSTICS)})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
