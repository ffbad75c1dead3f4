"""Screenshot TensorBoard's faeval tab with headless Chromium, as a new user would first see it.

Usage:
    python tools/tensorboard_screenshot.py lightning_logs --out docs/tensorboard.png
    python tools/tensorboard_screenshot.py LOGDIR [--out PNG] [--tab custom_scalars]
        [--width 1600] [--height 1500] [--wait 20]

A sweep's folder (``faeval sweep --out``) is shown as its study view: its ``tensorboard/``
folder of one run per method (``faeval.study.tensorboard``; ``faeval report`` writes it).
Starts ``tensorboard --logdir LOGDIR`` on a free local port, waits until it answers, points
Debian's ``chromium --headless --screenshot`` at the tab (default: Custom Scalars, where
faeval's charts are) with TensorBoard's default settings, and stops the server. Needs
``chromium`` (``apt-get install chromium``). The README's picture is made with

    faeval fit --config configs/fmnist_dfa_quickstart.yaml
    faeval fit --config configs/fmnist_dfa_quickstart.yaml --model BP
    python tools/tensorboard_screenshot.py lightning_logs --out docs/tensorboard.png

and the study's (BP, FA, DFA and FrozenBlocks × 3 seeds) with

    faeval sweep configs/sweeps/fmnist_reference.yaml --out /tmp/study && faeval report /tmp/study
    python tools/tensorboard_screenshot.py /tmp/study --out docs/tensorboard_study.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"TensorBoard did not answer at {url} within {seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logdir", type=Path, help="the folder TensorBoard reads")
    parser.add_argument("--out", type=Path, default=Path("tensorboard.png"))
    parser.add_argument("--tab", default="custom_scalars", help="custom_scalars, scalars, hparams")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--wait", type=float, default=20.0, help="seconds the page may render")
    args = parser.parse_args(argv)
    if not args.logdir.is_dir():
        print(f"screenshot: error: no folder {args.logdir}; pass a logs folder", file=sys.stderr)
        return 2
    study = args.logdir / "tensorboard"
    if (args.logdir / "runs").is_dir() and study.is_dir():  # a sweep: its study view
        args.logdir = study
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("screenshot: error: no chromium; apt-get install chromium", file=sys.stderr)
        return 2
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir),
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/data/plugins_listing", 60)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={args.width},{args.height}",
             f"--virtual-time-budget={int(args.wait * 1000)}",
             f"--screenshot={args.out.resolve()}", f"http://127.0.0.1:{port}/#{args.tab}"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=args.wait + 120,
        )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"[screenshot] {args.out} ({args.tab} of {args.logdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
