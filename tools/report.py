"""Turn a sweep directory into the verdict table, the standard-pair table and plots.

Usage:
    python tools/report.py sweeps/fmnist_reference
    python tools/report.py SWEEP_DIR [--out DIR] [--growth_threshold 50] [--grad_floor 1e-7]
        [--stability_threshold 0.1] [--margin 0.02] [--null_sigmas 2]

Reads the runs that ``tools/sweep.py`` wrote (DIR/runs/<setting>/<method>/seed<S>/) and
judges each from its logs alone (diagnostics.jsonl, protocol.jsonl): nothing is re-run.
Writes, in --out (default: the sweep directory):
    report.md    per setting: the verdict table (per method, each diagnostic PASS/FIRES/MIXED
                 across seeds, with per-seed figures), the standard-pair table (accuracy
                 mean ± std, Γ, margin over FrozenBlocks) and the plots
    report.json  the same, per run and per method
    <setting>_norms.png     ‖h_L‖ and ‖g_L‖ over epochs (log scale, one line per method,
                            seeds as a band, the floor drawn)
    <setting>_cosine.png    per-layer cos(a_l, g_l) at the last epoch
    <setting>_accuracy.png  test accuracy per method and seed against FrozenBlocks
Prints the tables, and which planned runs are missing, failed or unfinished: an empty,
partial or mixed sweep directory is reported as far as it goes.
"""

from __future__ import annotations

import argparse
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
from faeval.protocol.render import verdict_table
from faeval.protocol.settings import Thresholds
from faeval.protocol.verdicts import DIAGNOSTICS, RunVerdict, judge_run, judge_seeds
from faeval.runlog import DEPTH_BASELINE, RunLog, is_depth_baseline, mean_std

DPI = 100
SIZES = {"norms": (12.0, 4.5), "cosine": (7.0, 4.5), "accuracy": (7.0, 4.5)}  # inches


def discover(sweep: Path) -> tuple[list[dict], list[dict]]:
    """Planned runs (from sweep.json, else what is on disk) and their states.

    Returns:
        (runs, problems): every run dir found or planned with ``state`` in ok / failed /
        unfinished / missing; problems are those not ok.
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
        status = (
            json.loads((d / "status.json").read_text()) if (d / "status.json").is_file() else None
        )
        if status is None:
            state = "unfinished" if RunLog(d).rows_path.is_file() else "missing"
        else:
            state = "ok" if status["status"] == "ok" else "failed"
        runs.append(
            {
                "setting": setting,
                "method": method,
                "seed": seed,
                "run_dir": d,
                "state": state,
                "error": (status or {}).get("error", ""),
            }
        )
    return runs, [r for r in runs if r["state"] != "ok"]


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


def pm(ms: tuple[float, float] | None, scale: float = 1.0, fmt: str = "{:.4f}") -> str:
    if ms is None:
        return "n/a"
    return f"{fmt.format(scale * ms[0])} ± {fmt.replace('+', '').format(scale * ms[1])}"


def pair_table(by_method: dict[str, list[RunVerdict]]) -> tuple[str, dict]:
    """Markdown standard-pair table and its numbers."""
    lines = [
        "| method | seeds | test acc | Γ (all layers) | cos layer 0 | deep cos | "
        "margin over FrozenBlocks (pp) |",
        "|---|---|---|---|---|---|---|",
    ]
    numbers = {}
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
        margin = "n/a (baseline)" if baseline else pm(nums["margin"], 100, "{:+.2f}")
        lines.append(
            f"| {method} | {len(rvs)} | {pm(nums['acc'])} | {gamma} | "
            f"{pm(nums['cos_l0'], fmt='{:+.3f}')} | {pm(nums['cos_deep'], fmt='{:+.3f}')}"
            f" | {margin} |"
        )
        numbers[method] = {
            k: None if v is None else {"mean": v[0], "std": v[1]} for k, v in nums.items()
        }
        numbers[method]["gamma_unmeasurable"] = unmeasured
    return "\n".join(lines), numbers


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [
        (r["epoch"], r[key])
        for r in rows
        if r.get(key) is not None and math.isfinite(r[key]) and r[key] > 0
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_norms(judged, floor: float, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=SIZES["norms"], dpi=DPI)
    for ax, key, title in (
        (axes[0], "h_L", "‖h_L‖ (mean per-sample L2)"),
        (axes[1], "g_L", "‖g_L‖ (true gradient at h_L)"),
    ):
        for i, (method, runs) in enumerate(group(judged).items()):
            per_epoch = defaultdict(list)
            for r, _ in runs:
                for e, v in zip(*series(r["rows"], key), strict=True):
                    per_epoch[e].append(v)
            if not per_epoch:
                continue
            epochs = sorted(per_epoch)
            mid = [statistics.median(per_epoch[e]) for e in epochs]
            color = f"C{i}"
            ax.plot(epochs, mid, color=color, label=f"{method} (median of {len(runs)} seeds)")
            ax.fill_between(
                epochs,
                [min(per_epoch[e]) for e in epochs],
                [max(per_epoch[e]) for e in epochs],
                color=color,
                alpha=0.2,
            )
        if key == "g_L":
            ax.axhline(floor, color="k", ls="--", lw=1, label=f"floor {floor:g} (b)")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
    save(fig, path)


def plot_cosine(judged, path: Path) -> None:
    fig, ax = plt.subplots(figsize=SIZES["cosine"], dpi=DPI)
    for i, (method, runs) in enumerate(group(judged).items()):
        last = [r["rows"][-1]["cos"] for r, _ in runs if r["rows"]]
        if not last:
            continue
        layers = range(len(last[0]))
        stats = [mean_std([c[layer] for c in last if layer < len(c)]) for layer in layers]
        xs = [x for x, s in zip(layers, stats, strict=True) if s is not None]
        if not xs:
            ax.plot([], [], color=f"C{i}", label=f"{method}: unmeasurable (floor)")
            continue
        ax.errorbar(
            xs,
            [stats[x][0] for x in xs],
            yerr=[stats[x][1] for x in xs],
            color=f"C{i}",
            marker="o",
            capsize=3,
            label=method,
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("layer l (0 = embedding)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cos(a_l, g_l) at the last epoch")
    ax.set_title("Per-layer credit cosine (mean ± std over seeds)")
    save(fig, path)


def plot_accuracy(judged, margin: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=SIZES["accuracy"], dpi=DPI)
    methods = list(group(judged))
    frozen = [
        rv.pair["acc"]
        for _, rv in judged
        if rv.role == DEPTH_BASELINE and rv.pair["acc"] is not None
    ]
    if frozen:
        f = statistics.fmean(frozen)
        ax.axhline(f, color="k", ls="-", lw=1, label=f"FrozenBlocks {f:.3f}")
        ax.axhline(f + margin, color="k", ls="--", lw=1, label=f"+ margin {100 * margin:g} pp")
    for i, method in enumerate(methods):
        accs = [
            (rv.seed, rv.pair["acc"])
            for _, rv in judged
            if rv.method == method and rv.pair["acc"] is not None
        ]
        if accs:
            ax.scatter([i] * len(accs), [a for _, a in accs], color=f"C{i}", zorder=3)
            ax.plot(
                [i - 0.2, i + 0.2], [statistics.fmean(a for _, a in accs)] * 2, color=f"C{i}", lw=2
            )
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy per seed against FrozenBlocks (d)")
    save(fig, path)


def save(fig, path: Path) -> None:
    """Legends on every axis, tight layout, written at ``DPI``, closed."""
    for ax in fig.axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def group(judged) -> dict[str, list]:
    out: dict[str, list] = defaultdict(list)
    for r, rv in judged:
        out[r["method"]].append((r, rv))
    # The depth baseline last, the methods by name.
    return dict(sorted(out.items(), key=lambda kv: (kv[1][0][1].role == DEPTH_BASELINE, kv[0])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, help="the sweep directory")
    parser.add_argument("--out", type=Path, default=None, help="default: the sweep directory")
    defaults = Thresholds()
    for name, value in defaults.as_dict().items():
        parser.add_argument(f"--{name}", type=float, default=value)
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        print(
            f"report: error: no sweep folder at {args.sweep}; pass the --out folder of "
            "tools/sweep.py",
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
    runs, problems = discover(args.sweep)
    md = [
        f"# faeval sweep report: `{args.sweep}`",
        "",
        "Thresholds: " + ", ".join(f"`{k}={v:g}`" for k, v in thresholds.as_dict().items()),
        "",
    ]
    report = {
        "sweep": str(args.sweep),
        "thresholds": thresholds.as_dict(),
        "settings": {},
        "problems": [{k: str(v) for k, v in p.items()} for p in problems],
    }
    if problems:
        md += ["## Runs not reported", ""]
        md += [
            f"- {p['setting']}/{p['method']}/seed{p['seed']}: **{p['state']}**"
            + (f" ({p['error']})" if p["error"] else "")
            for p in problems
        ]
        md.append("")
    finished = [r for r in runs if r["state"] == "ok"]
    if not finished:
        md.append("No finished runs: nothing to judge yet.")
    for setting in sorted({r["setting"] for r in finished}):
        judged = judge_setting([r for r in finished if r["setting"] == setting], thresholds)
        by_method = {m: [rv for _, rv in v] for m, v in group(judged).items()}
        seeds = {m: judge_seeds(rvs) for m, rvs in by_method.items()}
        pairs, numbers = pair_table(by_method)
        names = {k: f"{setting}_{k}.png" for k in SIZES}
        plot_norms(judged, thresholds.grad_floor, out / names["norms"])
        plot_cosine(judged, out / names["cosine"])
        plot_accuracy(judged, thresholds.margin, out / names["accuracy"])
        md += [
            f"## Setting `{setting}`",
            "",
            "### Verdicts (across seeds)",
            "",
            verdict_table(seeds),
            "",
            "### Standard pair",
            "",
            pairs,
            "",
            f"![norms]({names['norms']})",
            "",
            f"![cosine]({names['cosine']})",
            "",
            f"![accuracy]({names['accuracy']})",
            "",
        ]
        report["settings"][setting] = {
            "runs": [{**rv.as_dict(), "run_dir": str(r["run_dir"])} for r, rv in judged],
            "methods": {
                m: {
                    "verdicts": {
                        k: {
                            "status": sv.status,
                            "rule": sv.rule,
                            "advisory": sv.advisory,
                            "seeds": [list(s) for s in sv.seeds],
                        }
                        for k, sv in seeds[m].items()
                    },
                    "pair": numbers[m],
                }
                for m in seeds
            },
            "plots": names,
        }
        print(f"== setting {setting}\n{verdict_table(seeds)}\n\n{pairs}\n", flush=True)
        for name in names.values():
            print(f"[report] plot {out / name}", flush=True)
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=1))
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
