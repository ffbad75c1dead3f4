"""Verdicts as text (the console) and Markdown (audit files, sweep reports)."""

from __future__ import annotations

import math

from faeval.protocol.verdicts import DIAGNOSTICS, RunVerdict, SeedVerdict
from faeval.runlog import fmt


def figure(key: str, value: float | None) -> str:
    """A verdict's figure in its diagnostic's own units."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if key == "a":
        return f"×{value:.3g}"
    if key == "b":
        return f"{value:.2e}"
    if key == "d":
        return f"{100 * value:+.2f} pp"
    return f"{value:+.3f}"


def pair_line(rv: RunVerdict) -> str:
    """The standard pair, with layer 0 apart and the margin over FrozenBlocks."""
    p = rv.pair
    margin = "n/a" if p["margin"] is None else f"{100 * p['margin']:+.2f} pp"
    return (
        f"standard pair: acc {fmt(p['acc'], '.4f')}, Γ {fmt(p['gamma'], '+.3f')}  "
        f"(cos layer 0 {fmt(p['cos_l0'], '+.3f')}, deep {fmt(p['cos_deep'], '+.3f')})"
        f"  frozen acc {fmt(p['frozen_acc'], '.4f')}, margin {margin}"
    )


def run_text(rv: RunVerdict) -> str:
    """The console verdict of one run."""
    seed = "" if rv.seed is None else f" seed {rv.seed}"
    lines = [f"[faeval] verdict: {rv.method}{seed}, epoch {rv.epoch}"]
    for key, v in rv.verdicts.items():
        lines.append(f"  {v.name:<26} {v.status:<12} {figure(key, v.figure):>11}   {v.rule}")
        lines.append(f"  {'':<26} {v.detail}")
    lines.append("  " + pair_line(rv))
    lines.append(
        "  thresholds: " + ", ".join(f"{k}={v:g}" for k, v in rv.thresholds.as_dict().items())
    )
    return "\n".join(lines)


def run_markdown(rv: RunVerdict) -> str:
    """The Markdown verdict of one run: a table of diagnostics and the standard pair."""
    seed = "" if rv.seed is None else f", seed {rv.seed}"
    lines = [
        f"## Verdict: {rv.method}{seed}, epoch {rv.epoch}",
        "",
        "| diagnostic | verdict | figure | rule | figures |",
        "|---|---|---|---|---|",
    ]
    for key, v in rv.verdicts.items():
        lines.append(
            f"| {v.name} | **{v.status}** | {figure(key, v.figure)} | {v.rule} | {v.detail} |"
        )
    lines += [
        "",
        pair_line(rv),
        "",
        "Thresholds: " + ", ".join(f"`{k}={v:g}`" for k, v in rv.thresholds.as_dict().items()),
        "",
    ]
    return "\n".join(lines)


def seed_cell(sv: SeedVerdict) -> str:
    """``**FIRES** (s0 ×206, s1 ×190)``: the cross-seed verdict with per-seed figures, and
    the interval that decided it where one did."""
    if sv.status == "N/A":
        return "N/A"
    per = ", ".join(
        f"s{s}: {figure(sv.key, f)}" + ("" if st in ("PASS", "FIRES") else f" {st}")
        for s, st, f in sv.seeds
    )
    if sv.interval is not None:
        iv = sv.interval
        what = "over band " if sv.clearance else ""
        per += f"; {what}{100 * iv.level:g}% CI [{_span(sv, iv.low)}, {_span(sv, iv.high)}]"
    return f"**{sv.status}** ({per})"


def _span(sv: SeedVerdict, value: float) -> str:
    """An interval end in the diagnostic's units (a clearance is a plain difference)."""
    return f"{value:+.3f}" if sv.clearance else figure(sv.key, value)


def interval_text(method: str, sv: SeedVerdict) -> str:
    """How sure the cross-seed verdict of (d) or Mode 2 is, in a sentence or three.

    Says what the interval is of, where the threshold lies, which verdict follows, how the
    seeds voted one by one and, for MIXED, how many seeds would settle it.
    """
    iv = sv.interval
    name = DIAGNOSTICS[sv.key]
    if iv is None:
        votes = [st for _, st, _ in sv.seeds if st in ("PASS", "FIRES")]
        if len(votes) == 1:
            return f"{method}, {name}: one measurable seed, no interval: {sv.status} is its own."
        return ""
    level = f"{100 * iv.level:g}%"
    if sv.key == "d":
        quantity = "the margin over FrozenBlocks (each seed against its own FrozenBlocks run)"
    elif sv.rule.startswith("no feedback draw"):
        quantity = "deep ρ's clearance over its own run's random-credit control (ρ − band)"
    else:
        quantity = "the deep cosine's clearance over the top of its own run's null band"
    span = f"[{_span(sv, iv.low)}, {_span(sv, iv.high)}]"
    threshold = "0" if sv.clearance else _span(sv, iv.threshold)
    passes = sum(st == "PASS" for _, st, _ in sv.seeds)
    fires = sum(st == "FIRES" for _, st, _ in sv.seeds)
    text = (
        f"{method}, {name}: {quantity} is {_span(sv, iv.mean)} on average over {iv.n} seeds "
        f"(sd {_span(sv, iv.sd).lstrip('+')}); its {level} Student-t interval is {span}. "
    )
    if sv.status == "MIXED":
        text += (
            f"The threshold {threshold} lies inside it, so these seeds do not settle the "
            f"verdict: MIXED ({passes} pass, {fires} fire on their own). "
        )
        if iv.seeds_to_settle is not None:
            text += f"About {iv.seeds_to_settle} seeds would settle it if the mean and spread hold."
        else:
            text += "More seeds would not settle it: the mean sits on the threshold."
    else:
        side = "above" if sv.status == "PASS" else "below"
        text += f"It lies {side} the threshold {threshold}: {sv.status}"
        if passes and fires:
            text += f", although the seeds alone split ({passes} pass, {fires} fire)"
        text += "."
    return text


def verdict_table(
    methods: dict[str, dict[str, SeedVerdict]], marks: dict[tuple[str, str], str] | None = None
) -> str:
    """Markdown verdict table: one row per method, one column per diagnostic.

    Args:
        methods: per method, its cross-seed verdicts.
        marks: a mark to append to the cell of ``(method, key)`` (a report's budget warning).
    """
    keys = list(DIAGNOSTICS)
    marks = marks or {}
    head = "| method | " + " | ".join(DIAGNOSTICS[k] for k in keys) + " |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]
    for method, table in methods.items():
        cells = [seed_cell(table[k]) + marks.get((method, k), "") for k in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if methods:  # a rule can differ by method (Mode 2 uses ρ where there is no feedback)
        rules = {k: list(dict.fromkeys(t[k].rule for t in methods.values())) for k in keys}
        lines += [
            "",
            "Rules: " + "; ".join(f"{DIAGNOSTICS[k]}: {' / '.join(rules[k])}" for k in keys),
        ]
    return "\n".join(lines)
