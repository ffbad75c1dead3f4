"""Where a report's numbers come from: software, machine, and the compute each method used.

``provenance`` names the faeval version (and its git commit when faeval runs from a
checkout), Python, torch and Lightning, the CPU and GPU of the machine that writes the
report, and when. ``compute`` reads the runs' ``status.json`` (written by ``faeval sweep``:
``seconds`` of the run's process, ``epochs`` trained) per method. Neither imports torch.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
import shutil
import statistics
import subprocess
from pathlib import Path

import faeval


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_commit(path: Path | None = None) -> str | None:
    """The commit of the git checkout faeval runs from (``+dirty`` with local changes), or
    None when faeval is not in a checkout (an installed wheel) or git is missing."""
    where = str(path or Path(faeval.__file__).resolve().parent)
    if shutil.which("git") is None:
        return None

    def git(*args: str) -> str | None:
        done = subprocess.run(
            ["git", "-C", where, *args], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return commit + ("+dirty" if dirty else "")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """The NVIDIA GPUs ``nvidia-smi`` lists ([] without one)."""
    if shutil.which("nvidia-smi") is None:
        return []
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return [n.strip() for n in done.stdout.splitlines() if n.strip()] if not done.returncode else []


def provenance() -> dict:
    """Software and machine of this report, as a flat dict (see the module docstring)."""
    return {
        "faeval": faeval.__version__,
        "faeval_commit": git_commit(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "lightning": _version("lightning"),
        "cpu": cpu_name(),
        "gpu": ", ".join(gpu_names()) or "none",
        "host": platform.node(),
        "written": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def compute(runs: list[dict]) -> dict[str, dict]:
    """Per method, the compute its finished runs used, from their ``status.json``.

    Args:
        runs: ``report.discover``'s runs (``method``, ``run_dir``, ``state``).

    Returns:
        per method: ``runs``, ``epochs`` (per run, sorted), ``seconds`` (per run: the wall
        time of its process, as the sweep measured it), ``total_seconds``,
        ``median_seconds``; methods whose runs have no ``seconds`` are left out.
    """
    out: dict[str, dict] = {}
    for r in runs:
        path = Path(r["run_dir"]) / "status.json"
        if r.get("state") != "ok" or not path.is_file():
            continue
        status = json.loads(path.read_text())
        if not isinstance(status.get("seconds"), (int, float)):
            continue
        entry = out.setdefault(r["method"], {"epochs": [], "seconds": []})
        entry["epochs"].append(int(status.get("epochs") or 0))
        entry["seconds"].append(float(status["seconds"]))
    for entry in out.values():
        entry["runs"] = len(entry["seconds"])
        entry["epochs"].sort()
        entry["total_seconds"] = sum(entry["seconds"])
        entry["median_seconds"] = statistics.median(entry["seconds"])
    return out


def wall_span(runs: list[dict]) -> float | None:
    """Seconds from the first run's start to the last run's end, from the times the runs'
    ``status.json`` were written less their ``seconds`` (None without any)."""
    spans = []
    for r in runs:
        path = Path(r["run_dir"]) / "status.json"
        if path.is_file():
            seconds = json.loads(path.read_text()).get("seconds")
            if isinstance(seconds, (int, float)):
                end = path.stat().st_mtime
                spans.append((end - seconds, end))
    if not spans:
        return None
    return max(e for _, e in spans) - min(s for s, _ in spans)
