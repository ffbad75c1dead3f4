"""The study's commands in an installed faeval: a wheel in a fresh environment, no checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv

import pytest

from tests.study.sweeps import ROOT

pytestmark = [pytest.mark.slow]


def test_sweep_and_report_run_from_a_wheel_in_any_folder(tmp_path):
    wheels, src = tmp_path / "wheels", tmp_path / "src"  # built from a copy: the checkout
    src.mkdir()  # gets no build/ or egg-info
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "faeval", src / "faeval", ignore=shutil.ignore_patterns("__pycache__"))
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)]
    subprocess.run([sys.executable, "-m", "pip", *build], check=True, capture_output=True)
    (wheel,) = wheels.glob("faeval-*.whl")
    env_dir = tmp_path / "env"
    # The environment's torch and friends come from the machine; faeval only from the wheel.
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = ["--python", str(python), "install", "-q", "--no-deps", str(wheel)]
    subprocess.run([sys.executable, "-m", "pip", *install], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import faeval; print(faeval.__file__)"],
        cwd=elsewhere, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert str(env_dir) in where  # the wheel's faeval, not this checkout's
    for command in ("sweep", "report"):
        out = subprocess.run(
            [str(env_dir / "bin" / "faeval"), command, "--help"],
            cwd=elsewhere, capture_output=True, text=True,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert f"faeval {command}" in out.stdout
    # A spec with a mistake, checked by the installed package, from an empty folder.
    (elsewhere / "spec.yaml").write_text("seeds: [0, 0]\nmethods: [DFA]\n")
    out = subprocess.run(
        [str(env_dir / "bin" / "faeval"), "sweep", "spec.yaml", "--out", "out"],
        cwd=elsewhere, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "names 0 twice" in out.stderr and "Traceback" not in out.stderr
    assert not (elsewhere / "out").exists()
