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
    if key == "bp":
        return f"{value:.1e}"
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


#: What the figure of each diagnostic is, in a report's cells.
QUANTITY = {
    "a": "max growth",
    "b": "‖g_L‖",
    "c": "stability",
    "d": "margin",
    "mode2": "deep cos",
    "bp": "distance from backprop",
}


def _quantity(sv: SeedVerdict) -> str:
    """What the interval of ``sv`` is of (the figure, or its clearance over each run's band)."""
    if sv.key == "mode2" and sv.rule.startswith("no feedback draw"):
        return "ρ clearance over random credit"
    if sv.clearance:
        return "clearance over band" if sv.key == "mode2" else f"{QUANTITY[sv.key]} − threshold"
    return QUANTITY[sv.key]


def decided_cell(sv: SeedVerdict) -> str:
    """A report's verdict cell: the verdict, then the figure that decided it, labelled.

    (d) and Mode 2 over two or more seeds: the mean of the per-seed quantity the interval is
    of (the margin; the clearance over each run's own band) and its Student-t interval,
    ``**PASS** clearance over band: mean +0.979 [95% CI +0.965, +0.993], n=3``. The others
    (and a single measurable seed): the range of the per-seed figure, each seed judged on
    its own, ``**FIRES** max growth: ×190 … ×206 (min … max, 3 seeds; 3 fire)``. The note
    "backprop in disguise" reads as a note, never a bold FIRES.
    """
    if sv.status == "N/A":
        return "N/A"
    figures = [f for _, st, f in sv.seeds if st in ("PASS", "FIRES") and f is not None]
    fires = sum(st == "FIRES" for _, st, _ in sv.seeds)
    iv = sv.interval
    if iv is not None:
        what = (
            f"{_quantity(sv)}: mean {_span(sv, iv.mean)} "
            f"[{100 * iv.level:g}% CI {_span(sv, iv.low)}, {_span(sv, iv.high)}], n={iv.n}"
        )
    elif figures:
        lo, hi = min(figures), max(figures)
        n = len(figures)
        span = figure(sv.key, lo) if lo == hi else f"{figure(sv.key, lo)} … {figure(sv.key, hi)}"
        label = "1 seed" if n == 1 else f"min … max, {n} seeds"
        what = f"{QUANTITY[sv.key]}: {span} ({label}; {fires} fire)"
    else:
        what = ""
    if sv.key == "bp":  # a note, not a failure: FIRES means "the credit is backprop's"
        if not figures:
            return sv.status
        span = figure("bp", hi) if lo == hi else f"{figure('bp', lo)} … {figure('bp', hi)}"
        if sv.status == "FIRES":
            return (
                f"note: the credit is backprop's (distance ≤ {figure('bp', hi)}, {n} of {n} seeds)"
            )
        if sv.status == "PASS":
            return f"not backprop's (distance {span}, {n} seeds)"
        return f"note on {fires} of {n} seeds: the credit is backprop's (distance {span})"
    return f"**{sv.status}** {what}".rstrip()


def rules_apart(methods: dict[str, dict[str, SeedVerdict]]) -> list[str]:
    """The rules as a Markdown list, one line per rule: where a diagnostic's rule differs by
    method (Mode 2 judges ρ where there is no feedback draw), each rule on its own line with
    the methods it applies to."""
    lines = []
    for key, name in DIAGNOSTICS.items():
        by_rule: dict[str, list[str]] = {}
        for method, table in methods.items():
            if table[key].status != "N/A":
                by_rule.setdefault(table[key].rule, []).append(method)
        if key == "bp":  # the note applies, it does not fail
            by_rule = {r.replace("fires when", "applies when"): m for r, m in by_rule.items()}
        if len(by_rule) == 1:
            lines.append(f"- {name}: {next(iter(by_rule))}.")
        for rule, names in by_rule.items() if len(by_rule) > 1 else ():
            lines.append(f"- {name}, for {', '.join(names)}: {rule}.")
    return lines


CELL_LEGEND = (
    "Each cell: the verdict, then the figure that decided it. (d) and Mode 2: the mean over "
    "seeds of the per-seed margin (pp) or clearance over the run's own band, with its 95% "
    "Student-t interval [low, high] (PASS: the interval lies above the threshold; FIRES: "
    "below; MIXED: it contains it). The others: the per-seed figure as min … max over the "
    "measurable seeds, and how many seeds fire (the note: how many are backprop's)."
)


def study_table(
    methods: dict[str, dict[str, SeedVerdict]], marks: dict[tuple[str, str], str] | None = None
) -> str:
    """A report's Markdown verdict table: ``decided_cell`` per method and diagnostic, the
    legend of its cells and the rules, each stated apart (``rules_apart``)."""
    keys = list(DIAGNOSTICS)
    marks = marks or {}
    lines = [
        "| method | " + " | ".join(DIAGNOSTICS[k] for k in keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for method, table in methods.items():
        cells = [decided_cell(table[k]) + marks.get((method, k), "") for k in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if methods:
        lines += ["", CELL_LEGEND, "", "Rules:", "", *rules_apart(methods)]
    return "\n".join(lines)


#: Unicode in faeval's cells and the LaTeX (text mode) that prints it.
LATEX_SYMBOLS = {
    "×": r"$\times$",
    "‖": r"$\|$",
    "±": r"$\pm$",
    "Γ": r"$\Gamma$",
    "ρ": r"$\rho$",
    "σ": r"$\sigma$",
    "·": r"$\cdot$",
    "−": r"$-$",
    "–": "--",
    "…": r"\dots{}",
    "≤": r"$\leq$",
    "⚠": r"$^\dagger$",
}


def latex_text(text: str) -> str:
    """Plain text (a Markdown cell) as LaTeX text: ``**X**`` as ``\\textbf{X}``, LaTeX's
    special characters escaped, faeval's Unicode symbols as math."""
    special = {
        "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&",
        "%": r"\%", "#": r"\#", "_": r"\_", "^": r"\^{}", "~": r"\~{}",
    }  # fmt: skip
    out = "".join(special.get(ch, ch) for ch in text)
    parts = out.split("**")
    out = "".join(p if i % 2 == 0 else rf"\textbf{{{p}}}" for i, p in enumerate(parts))
    return "".join(LATEX_SYMBOLS.get(ch, ch) for ch in out)


def latex_tabular(head: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A booktabs ``tabular`` fragment (``\\toprule``, ``\\midrule``, ``\\bottomrule``: needs
    ``\\usepackage{booktabs}``) of plain-text cells, each through ``latex_text``."""
    align = align or "l" * len(head)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    lines.append(" & ".join(latex_text(h) for h in head) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(latex_text(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def latex_verdicts(
    methods: dict[str, dict[str, SeedVerdict]], marks: dict[tuple[str, str], str] | None = None
) -> str:
    """The verdict table of ``study_table`` as a booktabs tabular fragment, one column per
    diagnostic (p-columns: the cells carry their deciding figure and interval)."""
    keys = list(DIAGNOSTICS)
    marks = marks or {}
    rows = [
        [method] + [decided_cell(table[k]) + marks.get((method, k), "") for k in keys]
        for method, table in methods.items()
    ]
    align = "l" + r"p{2.3cm}" * len(keys)
    return latex_tabular(["method"] + [DIAGNOSTICS[k] for k in keys], rows, align)
