"""The report of a hand-written sweep (tests/study/fake_sweep.py): every verdict cell carries
the figure that decided it with its interval (checked against scipy's Student t), the
statistics are labelled, the note reads as a note, the two Mode 2 rules stand apart, the
LaTeX tables parse as booktabs fragments, provenance and compute are stated, and the
epoch-curve and paired-margin figures exist as PNG and PDF."""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import statistics

import matplotlib.image
import pytest
from scipy import stats

import faeval
from faeval.runlog import RunLog
from faeval.study import report
from tests.study.fake_sweep import METHODS, SECONDS, SEEDS, write_fake_sweep


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval, from scipy (independent of faeval's own t)."""
    n = len(values)
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / n**0.5
    return mean, mean - half, mean + half


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = write_fake_sweep(tmp_path_factory.mktemp("fake"))
    assert report.main([str(root)]) == 0
    return root, (root / "report.md").read_text()


def rows(root, method):
    return {
        seed: (
            RunLog(root / "runs" / "tiny" / method / f"seed{seed}").rows(),
            RunLog(root / "runs" / "tiny" / method / f"seed{seed}").last_protocol(),
        )
        for seed in SEEDS
    }


def cell(md: str, method: str, column: int) -> str:
    """The ``column``-th diagnostic cell (0 = (a)) of ``method``'s verdict row."""
    line = next(x for x in md.splitlines() if x.startswith(f"| {method} |") and "**" in x)
    return [c.strip() for c in line.strip("|").split("|")][1 + column]


def test_mode2_cells_show_the_clearance_interval_that_decided_them(reported):
    root, md = reported
    dfa = rows(root, "DFA")
    clearance = [
        p["null"]["deep"] - (p["null"]["deep_mean"] + 2 * p["null"]["deep_std"])
        for _, p in dfa.values()
    ]
    mean, low, high = t_interval(clearance)
    text = cell(md, "DFA", 4)
    assert f"clearance over band: mean {mean:+.3f} [95% CI {low:+.3f}, {high:+.3f}], n=3" in text
    assert text.startswith("**PASS**") and low > 0
    # BP has no feedback draw: its clearance is deep ρ over random credit's ρ + 2σ.
    bp = rows(root, "BP")
    rho = [
        statistics.fmean(p["rho"]["rho"][1:])
        - statistics.fmean(p["rho"]["negative_mean"][1:])
        - 2 * statistics.fmean(p["rho"]["negative_std"][1:])
        for _, p in bp.values()
    ]
    mean, low, high = t_interval(rho)
    assert f"ρ clearance over random credit: mean {mean:+.3f} [95% CI {low:+.3f}, {high:+.3f}]" in (
        cell(md, "BP", 4)
    )
    # Per-seed deep cosines (not the deciding figure) are not what the cell shows.
    assert "s0:" not in cell(md, "DFA", 4)


def test_depth_cells_and_the_pair_table_carry_paired_intervals(reported):
    root, md = reported
    frozen = {s: r[-1]["test/acc"] for s, (r, _) in rows(root, "FrozenBlocks").items()}
    for method in ("BP", "DFA"):
        accs = {s: r[-1]["test/acc"] for s, (r, _) in rows(root, method).items()}
        margins = [100 * (accs[s] - frozen[s]) for s in SEEDS]
        mean, low, high = t_interval(margins)
        assert f"margin: mean {mean:+.2f} pp [95% CI {low:+.2f} pp, {high:+.2f} pp], n=3" in cell(
            md, method, 3
        )
        status = "PASS" if low > 2 else "FIRES" if high < 2 else "MIXED"
        assert cell(md, method, 3).startswith(f"**{status}**")
        acc_mean, acc_low, acc_high = t_interval(list(accs.values()))
        pair = next(
            x for x in md.splitlines() if x.startswith(f"| {method} | 3 |") and "pp" not in x
        )
        assert f"| {acc_mean:.4f} [{acc_low:.4f}, {acc_high:.4f}] |" in pair
        assert f"| {mean:+.2f} [{low:+.2f}, {high:+.2f}] |" in pair
    assert "test acc, mean [95% CI]" in md and "Γ (all layers), mean ± std" in md


def test_other_cells_show_the_range_over_seeds_and_the_note_reads_as_a_note(reported):
    root, md = reported
    growth = [max(row["growth"] for row in r) for r, _ in rows(root, "DFA").values()]
    assert (
        f"**FIRES** max growth: ×{min(growth):.3g} … ×{max(growth):.3g} (min … max, 3 seeds; "
        "3 fire)" in cell(md, "DFA", 0)
    )
    assert cell(md, "BP", 5).startswith("note: the credit is backprop's (distance ≤ 1.0e-09")
    assert cell(md, "DFA", 5).startswith("not backprop's")
    assert "FIRES" not in cell(md, "BP", 5) and "FIRES" not in cell(md, "FrozenBlocks", 5)
    # The two Mode 2 rules, each on its own line with the methods it applies to.
    rules = [x for x in md.splitlines() if x.startswith("- Mode 2 credit direction, for")]
    assert rules == [
        "- Mode 2 credit direction, for BP, FrozenBlocks: no feedback draw: fires when deep ρ"
        " <= random-credit ρ + 2·std.",
        "- Mode 2 credit direction, for DFA: fires when deep cos <= null mean + 2·std.",
    ]


def test_the_latex_tables_are_booktabs_fragments_that_parse(reported):
    root, _ = reported
    tex = (root / "report.tex").read_text()
    body = [x for x in tex.splitlines() if not x.startswith("%")]
    assert all(x.isascii() for x in body), [x for x in body if not x.isascii()]
    text = "\n".join(body)
    depth = 0
    for ch in re.sub(r"\\[{}]", "", text):  # escaped braces are text
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    tables = re.findall(r"\\begin\{tabular\}\{(.*?)\}\n(.*?)\\end\{tabular\}", text, re.S)
    assert len(tables) == 2  # the verdicts and the standard pair of setting tiny
    for align, inner in tables:
        columns = len(re.findall(r"[lrc]|p\{[^}]*\}", align))
        lines = inner.strip().splitlines()
        assert lines[0] == r"\toprule" and lines[2] == r"\midrule" and lines[-1] == r"\bottomrule"
        cells = lines[1:2] + lines[3:-1]
        assert len(cells) == 1 + len(METHODS)
        for row in cells:
            assert row.endswith(r" \\")
            assert len(re.findall(r"(?<!\\)&", row)) == columns - 1, row


def test_provenance_and_compute_are_stated(reported):
    root, md = reported
    head = md.split("## Setting")[0]
    assert f"faeval {faeval.__version__} (commit " in head
    assert f"torch {importlib.metadata.version('torch')}" in head
    made = json.loads((root / "report.json").read_text())["provenance"]
    assert made["faeval"] == faeval.__version__ and made["cpu"]
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", made["faeval_commit"])  # run from a checkout
    used = json.loads((root / "report.json").read_text())["settings"]["tiny"]["methods"]
    for method in METHODS:
        seconds = [SECONDS[method] + s for s in SEEDS]
        assert used[method]["compute"]["total_seconds"] == pytest.approx(sum(seconds))
        line = f"| {method} | 3 | 3 | {statistics.median(seconds):.1f} "
        line += f"({min(seconds):.1f}–{max(seconds):.1f}) | {sum(seconds):.1f} |"
        assert line in md


def test_the_curves_and_margin_figures_exist_as_png_and_pdf(reported):
    root, md = reported
    for name in ("curves", "margin"):
        w, h = report.SIZES[name]
        image = matplotlib.image.imread(root / f"tiny_{name}.png")
        assert image.shape[:2] == (round(h * report.DPI), round(w * report.DPI))
        assert (root / f"tiny_{name}.pdf").read_bytes().startswith(b"%PDF")
        assert f"![{name}](tiny_{name}.png)" in md
    assert not (root / "tiny_accuracy.png").exists()  # the unpaired figure is gone


def test_the_curves_are_the_median_and_range_of_the_seeds(reported):
    root, _ = reported
    dfa = [r for r, _ in rows(root, "DFA").values()]
    epochs, mid, low, high, n = report.seed_band([({"rows": r}, None) for r in dfa],
                                                 report.CURVES[0][1])  # fmt: skip
    by_epoch = [[math.log10(r[e]["h_L"]) for r in dfa] for e in epochs]
    assert n == 3 and epochs == [0, 1, 2, 3]
    assert mid == pytest.approx([sorted(v)[1] for v in by_epoch])
    assert low == pytest.approx([min(v) for v in by_epoch])
    assert high == pytest.approx([max(v) for v in by_epoch])


def test_an_accuracy_interval_is_cut_to_0_1_and_any_other_is_not():
    """Three very different seeds (PEPITA's 0.137, 0.830, 0.785 on Fashion-MNIST): the
    Student-t interval of the mean reaches below 0, which no accuracy can."""
    accs = [0.137, 0.830, 0.785]
    mean, low, high = t_interval(accs)
    assert low < 0 and high > 1  # the uncut interval, computed with scipy
    assert report.ci_text(accs, bounds=report.ACCURACY_RANGE) == f"{mean:.4f} [0.0000, 1.0000]"
    assert report.ci_text(accs) == f"{mean:.4f} [{low:.4f}, {high:.4f}]"  # a margin is not cut
    mean, low, high = t_interval(near := [0.80, 0.99, 0.995])  # cut at the top only
    assert 0 < low and high > 1
    assert report.ci_text(near, bounds=report.ACCURACY_RANGE) == f"{mean:.4f} [{low:.4f}, 1.0000]"
    narrow = [0.86, 0.87, 0.875]  # inside [0, 1]: unchanged
    want = "{:.4f} [{:.4f}, {:.4f}]".format(*t_interval(narrow))
    assert report.ci_text(narrow, bounds=report.ACCURACY_RANGE) == want
