"""The verdicts: pure functions of logged numbers, so a log is judged without re-running.

Per run, each diagnostic reads PASS, FIRES or UNMEASURABLE (N/A where it does not apply);
across seeds PASS, FIRES or MIXED. Every verdict carries the figure and the rule (threshold
included) that decided it.

Across seeds, (d) and Mode 2 are decided by how sure the seeds make them: their per-seed
figure is a difference within one seed (the margin over that seed's FrozenBlocks run; the
deep cosine's clearance over that run's own null band), and the Student-t interval of its
mean over seeds (``faeval.protocol.intervals``) reads PASS when it lies above the
threshold, FIRES below, MIXED when it contains it. The other diagnostics read PASS or FIRES
when every measurable seed agrees, MIXED when they disagree.

Inputs are the rows the ``Diagnostics`` callback writes (``diagnostics.jsonl``: one per
measured epoch, row 0 the initialisation) and the last row of the ``Protocol`` callback or
of ``faeval audit`` (null band, ρ, stability): ``faeval.runlog`` describes both. Pure Python
(no torch), so a report judges a sweep without loading it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from faeval.protocol.intervals import LEVEL, Interval, paired_interval
from faeval.protocol.settings import Thresholds
from faeval.runlog import DEPTH_BASELINE, EpochRow, ProtocolRow, deep_mean, fmt, measured

Status = Literal["PASS", "FIRES", "UNMEASURABLE", "N/A"]
SeedStatus = Literal["PASS", "FIRES", "MIXED", "UNMEASURABLE", "N/A"]

#: Order and names of the diagnostics in every table.
DIAGNOSTICS = {
    "a": "(a) activation growth",
    "b": "(b) gradient floor",
    "c": "(c) direction stability",
    "d": "(d) depth utilisation",
    "mode2": "Mode 2 credit direction",
}

#: The diagnostics whose cross-seed verdict an interval over seeds decides.
INTERVAL_KEYS = ("d", "mode2")


@dataclass
class Verdict:
    """One diagnostic's verdict on one run.

    Attributes:
        key: ``a``, ``b``, ``c``, ``d`` or ``mode2``.
        status: PASS, FIRES, UNMEASURABLE or N/A.
        figure: the number that decided it (None when there is none).
        rule: the rule with its threshold, e.g. ``fires when growth > 50``.
        detail: the figures behind it, in words.
        advisory: reported beside the others, not a clean pass/fail on its own.
        threshold: the value the figure was compared with, where the rule compares it
            with one (for Mode 2 the top of this run's band).
    """

    key: str
    status: Status
    figure: float | None
    rule: str
    detail: str
    advisory: bool = False
    threshold: float | None = None

    @property
    def name(self) -> str:
        return DIAGNOSTICS[self.key]


@dataclass
class RunVerdict:
    """Every verdict of one run, beside its standard pair.

    Attributes:
        method: the method's class name.
        seed: the run's seed (None when unknown).
        role: ``method``, or ``depth_baseline`` for the FrozenBlocks baseline of (d).
        verdicts: by key, in ``DIAGNOSTICS`` order.
        pair: the standard pair and its neighbours: ``acc``, ``gamma`` (Γ, cosine averaged
            over all layers), ``cos_l0``, ``cos_deep``, ``frozen_acc``, ``margin``.
        thresholds: the thresholds used.
        epoch: the last measured epoch.
    """

    method: str
    seed: int | None
    verdicts: dict[str, Verdict]
    pair: dict[str, float | None]
    thresholds: Thresholds
    epoch: int | None = None
    role: str = "method"

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": self.seed,
            "role": self.role,
            "epoch": self.epoch,
            "verdicts": {k: {**asdict(v), "name": v.name} for k, v in self.verdicts.items()},
            "pair": self.pair,
            "thresholds": self.thresholds.as_dict(),
        }


@dataclass
class SeedVerdict:
    """One diagnostic across the seeds of one method.

    Attributes:
        key: the diagnostic.
        status: for (d) and Mode 2 with two or more measurable seeds, PASS or FIRES when
            the interval lies above or below the threshold and MIXED when it contains it;
            otherwise PASS or FIRES when every measurable seed agrees, MIXED when they
            disagree. UNMEASURABLE when no seed could be measured, N/A when it applies to
            none.
        rule: the rule, with its threshold.
        seeds: per seed ``(seed, status, figure)``.
        advisory: as in ``Verdict``.
        interval: the interval that decided it: of the figure against the common threshold
            ((d)'s margin against ``margin``), or of figure − threshold against 0 where each
            seed has its own threshold (Mode 2's band); ``clearance`` says which.
        clearance: whether ``interval`` is of figure − threshold.
    """

    key: str
    status: SeedStatus
    rule: str
    seeds: list[tuple[int | None, Status, float | None]] = field(default_factory=list)
    advisory: bool = False
    interval: Interval | None = None
    clearance: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rule": self.rule,
            "advisory": self.advisory,
            "seeds": [list(s) for s in self.seeds],
            "interval": None if self.interval is None else self.interval.as_dict(),
            "clearance": self.clearance,
        }

    @property
    def name(self) -> str:
        return DIAGNOSTICS[self.key]


def judge_growth(rows: list[dict], threshold: float) -> Verdict:
    """(a): the largest growth factor max_l ‖h_l‖ / ‖h_l‖(init) over every logged epoch."""
    rule = f"fires when max growth > {threshold:g}"
    if not rows:
        return Verdict("a", "UNMEASURABLE", None, rule, "no diagnostics rows")
    growth = [r["growth"] if measured(r.get("growth")) else math.inf for r in rows]
    worst = max(range(len(rows)), key=lambda i: growth[i])
    figure = growth[worst]
    ratios = [v for r in rows for v in (r.get("h_ratio") or []) if v is not None]
    ratio = max((v if measured(v) else math.inf for v in ratios), default=None)
    last = rows[-1]
    detail = (
        f"max growth ×{figure:.3g} (epoch {rows[worst].get('epoch')}); ‖h_L‖ "
        f"{fmt(rows[0].get('h_L'))} at init -> {fmt(last.get('h_L'))} at epoch "
        f"{last.get('epoch')}; largest per-block ratio ‖h_l‖/‖h_l-1‖ ×{fmt(ratio)}"
    )
    status: Status = "FIRES" if figure > threshold else "PASS"
    return Verdict("a", status, figure, rule, detail)


def judge_floor(rows: list[dict], floor: float) -> Verdict:
    """(b): ‖g_L‖ at the last logged epoch against the floor; non-finite fires too."""
    rule = f"fires when ‖g_L‖ < {floor:g}"
    if not rows:
        return Verdict("b", "UNMEASURABLE", None, rule, "no diagnostics rows")

    def hit(r: dict) -> bool:
        return not (measured(r.get("g_L")) and r["g_L"] >= floor)

    last = rows[-1]
    first = next((r.get("epoch") for r in rows if hit(r)), None)
    detail = (
        f"‖g_L‖ {fmt(rows[0].get('g_L'))} at init -> {fmt(last.get('g_L'))} at epoch "
        f"{last.get('epoch')}"
    )
    if first is not None:
        detail += f"; first under the floor at epoch {first}"
    if hit(last):
        detail += "; cosines against g are UNMEASURABLE"
    figure = last.get("g_L") if measured(last.get("g_L")) else None
    return Verdict("b", "FIRES" if hit(last) else "PASS", figure, rule, detail)


def judge_stability(protocol: dict | None, threshold: float) -> Verdict:
    """(c): mean pairwise cosine of batch-mean credit directions at layer L/2 (advisory)."""
    rule = f"reads FIRES when stability < {threshold:g} (advisory)"
    stab = (protocol or {}).get("stability")
    if not stab:
        note = (protocol or {}).get(
            "stability_note"
        ) or "no protocol row (add the Protocol callback or run faeval audit)"
        return Verdict("c", "UNMEASURABLE", None, rule, note, advisory=True)
    value = stab["credit"]
    detail = (
        f"layer {stab['layer']}: credit {fmt(value)}, true gradient {fmt(stab['gradient'])} "
        f"({stab['batches']} batches of {stab['batch_size']})"
    )
    if not measured(value):
        return Verdict("c", "UNMEASURABLE", None, rule, detail, advisory=True)
    status: Status = "FIRES" if value < threshold else "PASS"
    return Verdict("c", status, value, rule, detail, advisory=True)


def judge_depth(role: str, acc: float | None, frozen_acc: float | None, margin: float) -> Verdict:
    """(d): test accuracy minus the FrozenBlocks accuracy (same backbone, data, seed, budget)."""
    rule = f"fires when acc − frozen acc < {100 * margin:g} pp"
    if role == DEPTH_BASELINE:
        return Verdict("d", "N/A", None, rule, "this is the FrozenBlocks baseline itself")
    if not measured(acc):
        return Verdict("d", "UNMEASURABLE", None, rule, "no test accuracy logged")
    if not measured(frozen_acc):
        return Verdict(
            "d",
            "UNMEASURABLE",
            None,
            rule,
            "no FrozenBlocks accuracy (audit: --frozen RUN_DIR or --train_frozen "
            "true; sweeps include it)",
        )
    diff = acc - frozen_acc
    detail = f"acc {acc:.4f} − frozen {frozen_acc:.4f} = {100 * diff:+.2f} pp"
    status: Status = "FIRES" if diff < margin - 1e-12 else "PASS"
    return Verdict("d", status, diff, rule, detail, threshold=margin)


def judge_mode2(protocol: dict | None, floor: Verdict, sigmas: float) -> Verdict:
    """Mode 2: the deep-layer cosine (layers 1..L) must clear the null band.

    For methods without a random feedback draw the null band does not apply; the deep-layer
    ρ is judged against ρ's negative control (random credits) the same way, and the verdict
    says so.
    """
    rule = f"fires when deep cos <= null mean + {sigmas:g}·std"
    if floor.status == "FIRES":
        return Verdict(
            "mode2",
            "UNMEASURABLE",
            None,
            rule,
            "(b) fires: every cosine against g is numerically meaningless",
        )
    if not protocol:
        return Verdict(
            "mode2",
            "UNMEASURABLE",
            None,
            rule,
            "no null band logged (add the Protocol callback or run faeval audit)",
        )
    null = protocol.get("null")
    rho = protocol.get("rho") or {}
    rho_txt = ""
    if rho.get("rho"):
        rho_txt = (
            f"; ρ deep {fmt(deep_mean(rho['rho']))}, l0 {fmt(rho['rho'][0])} (controls: a=g "
            f"{fmt(deep_mean(rho['positive']))}, random a "
            f"{fmt(deep_mean(rho['negative_mean']))})"
        )
    if null is not None:
        deep = null["deep"]
        detail = (
            f"deep cos {fmt(deep)} vs null {fmt(null['deep_mean'], '+.3f')} ± "
            f"{fmt(null['deep_std'], '.3f')} ({null['draws']} fresh draws); l0 cos "
            f"{fmt(null['cos'][0])}{rho_txt}"
        )
        if not all(measured(v) for v in (deep, null["deep_mean"], null["deep_std"])):
            return Verdict("mode2", "UNMEASURABLE", None, rule, detail)
        band = null["deep_mean"] + sigmas * null["deep_std"]
        status: Status = "PASS" if deep > band else "FIRES"
        return Verdict("mode2", status, deep, rule, detail, threshold=band)
    rule = f"no feedback draw: fires when deep ρ <= random-credit ρ + {sigmas:g}·std"
    if not rho.get("rho") or len(rho["rho"]) < 2:
        return Verdict("mode2", "UNMEASURABLE", None, rule, "no ρ logged")
    deep = deep_mean(rho["rho"])
    negative, spread = deep_mean(rho["negative_mean"]), deep_mean(rho["negative_std"])
    detail = (
        "null band not applicable ("
        + str(protocol.get("null_note", "no feedback draw"))
        + f"); judged on ρ{rho_txt}"
    )
    if deep is None or negative is None or spread is None:
        return Verdict("mode2", "UNMEASURABLE", None, rule, detail)
    band = negative + sigmas * spread
    status = "PASS" if deep > band else "FIRES"
    return Verdict("mode2", status, deep, rule, detail, threshold=band)


def judge_run(
    rows: list[EpochRow],
    protocol: ProtocolRow | None,
    method: str,
    frozen_acc: float | None = None,
    thresholds: Thresholds = Thresholds(),
    seed: int | None = None,
) -> RunVerdict:
    """Every verdict of one run from its logged rows.

    Args:
        rows: the ``diagnostics.jsonl`` rows, in epoch order (row 0 the initialisation);
            their ``role`` says whether the run is the depth baseline itself.
        protocol: the last ``protocol.jsonl`` (or audit) row, or None.
        method: the method's class name.
        frozen_acc: test accuracy of the matching FrozenBlocks run.
        thresholds: the thresholds.
        seed: the run's seed, for the tables.
    """
    floor = judge_floor(rows, thresholds.grad_floor)
    last = rows[-1] if rows else {}
    acc = last.get("test/acc")
    role = last.get("role") or "method"
    verdicts = {
        "a": judge_growth(rows, thresholds.growth_threshold),
        "b": floor,
        "c": judge_stability(protocol, thresholds.stability_threshold),
        "d": judge_depth(role, acc, frozen_acc, thresholds.margin),
        "mode2": judge_mode2(protocol, floor, thresholds.null_sigmas),
    }
    unmeasurable = floor.status == "FIRES"
    pair = {
        "acc": acc,
        "gamma": None if unmeasurable else last.get("gamma"),
        "cos_l0": None if unmeasurable else last.get("cos_l0"),
        "cos_deep": None if unmeasurable else last.get("cos_deep"),
        "frozen_acc": frozen_acc,
        "margin": acc - frozen_acc if measured(acc) and measured(frozen_acc) else None,
    }
    return RunVerdict(method, seed, verdicts, pair, thresholds, last.get("epoch"), role)


def merge_seeds(
    key: str, verdicts: list[tuple[int | None, Verdict]], level: float = LEVEL
) -> SeedVerdict:
    """One diagnostic across seeds: the measurable seeds decide.

    For (d) and Mode 2 (``INTERVAL_KEYS``) with two or more measurable seeds, the interval
    of the mean per-seed figure decides (``decide_by_interval``). Otherwise PASS (FIRES)
    when every measurable seed passes (fires), MIXED when they disagree. UNMEASURABLE when
    none is measurable, N/A when it applies to none.

    Args:
        key: the diagnostic.
        verdicts: ``(seed, verdict)`` per run.
        level: the confidence level of the interval.
    """
    seeds = [(s, v.status, v.figure) for s, v in verdicts]
    statuses = {v.status for _, v in verdicts}
    judged = statuses & {"PASS", "FIRES"}
    if len(judged) == 2:
        status: SeedStatus = "MIXED"
    elif judged:
        status = next(iter(judged))
    elif statuses == {"N/A"}:
        status = "N/A"
    else:
        status = "UNMEASURABLE"
    rule = verdicts[0][1].rule if verdicts else ""
    advisory = any(v.advisory for _, v in verdicts)
    merged = SeedVerdict(key, status, rule, seeds, advisory)
    if key in INTERVAL_KEYS:
        decide_by_interval(merged, [v for _, v in verdicts], level)
    return merged


def decide_by_interval(merged: SeedVerdict, verdicts: list[Verdict], level: float) -> None:
    """Sets ``merged``'s interval, and its status from it, over the measurable seeds.

    PASS when the interval lies above the threshold, FIRES when it lies below it, MIXED
    when it contains it. With fewer than two measurable seeds there is no interval and the
    seeds' own statuses stand.
    """
    judged = [
        v
        for v in verdicts
        if v.status in ("PASS", "FIRES") and measured(v.figure) and measured(v.threshold)
    ]
    if len(judged) < 2:
        return
    edges = {v.threshold for v in judged}
    # Mode 2's band is each run's own; where seeds have their own threshold, compare each
    # seed's clearance over it (figure − threshold) with 0.
    merged.clearance = merged.key == "mode2" or len(edges) > 1
    if merged.clearance:
        values, threshold = [v.figure - v.threshold for v in judged], 0.0
    else:
        values, threshold = [v.figure for v in judged], judged[0].threshold
    interval = paired_interval(values, threshold, level)
    if interval is None:  # a non-finite figure: the seeds' own statuses stand
        return
    merged.interval = interval
    if interval.low > threshold:
        merged.status = "PASS"
    elif interval.high < threshold:
        merged.status = "FIRES"
    else:
        merged.status = "MIXED"


def judge_seeds(runs: list[RunVerdict], level: float = LEVEL) -> dict[str, SeedVerdict]:
    """Every diagnostic across the seeds of one method (intervals at ``level``)."""
    return {
        key: merge_seeds(key, [(r.seed, r.verdicts[key]) for r in runs], level)
        for key in DIAGNOSTICS
    }
