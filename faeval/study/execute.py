"""Running a sweep's work: one training process per stack (or run), and the local executor.

``execute_stack`` is what every executor runs for one piece of work, here or in a Slurm
task: it continues an interrupted attempt from its last.ckpt or starts afresh, runs
``faeval fit`` in a process, and records each run's status from what the run recorded.
``LocalExecutor`` runs the pieces in a pool of processes on this machine;
``faeval.study.slurm.SlurmExecutor`` submits them as a Slurm job array. Both take the same
work and return the same statuses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from faeval.runend import clear_end
from faeval.study.plan import LAST_CKPT, Run, command, stack_dir, stacked_command
from faeval.study.state import (
    continues,
    record_status,
    report_line,
    set_aside,
    set_aside_stacks_of,
)

#: take the run for a process of a multi-process Slurm launch (and handle Slurm's signals).
SLURM_PREFIXES = ("SLURM_", "SLURMD_", "SUBMITIT_")


def execute(
    spec: dict,
    run: Run,
    out: Path,
    threads: int,
    started: Callable[[subprocess.Popen], None] | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> dict:
    """Runs one training process for one run and records its status (``execute_stack``)."""
    return execute_stack(spec, [run], out, threads, started, env, preexec_fn)[0]


def execute_stack(
    spec: dict,
    runs: list[Run],
    out: Path,
    threads: int,
    started: Callable[[subprocess.Popen], None] | None = None,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> list[dict]:
    """Trains ``runs`` (one setting and method) in one process, stacked when more than one;
    records each run's status (never raises for a failed run).

    An unfinished earlier attempt continues from its last.ckpt (the stack's, or the lone
    run's); any other is set aside and the runs start afresh.

    Args:
        spec, runs, out: the sweep, the runs and the sweep folder.
        threads: OMP_NUM_THREADS of the process.
        started: called with the process once started (the Slurm task keeps it to stop it).
        env: the process's environment (default: this process's).
        preexec_fn: run in the child before ``faeval`` starts (the Slurm task's signals).
    """
    resume = continues(out, runs)
    stacked = len(runs) > 1
    if not resume:  # a failed or stale earlier attempt: keep it, out of the way
        set_aside_stacks_of(out, runs)
        if stacked:
            set_aside(out, stack_dir(out, runs))  # one killed before it wrote its record
        for run in runs:
            set_aside(out, run.dir(out))
    if stacked:
        folder = stack_dir(out, runs)
        cmd = stacked_command(spec, runs, out)
    else:
        folder = runs[0].dir(out)
        cmd = command(spec, runs[0], folder)
    for run in runs:
        run.dir(out).mkdir(parents=True, exist_ok=True)
        clear_end(run.dir(out))  # training again: how an earlier attempt ended no longer holds
    folder.mkdir(parents=True, exist_ok=True)
    if resume:
        cmd += ["--ckpt_path", str(folder / LAST_CKPT)]
    env = {
        **(os.environ if env is None else env),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    start = time.perf_counter()
    log_file = folder / "run.log"
    with log_file.open("a" if resume else "w") as log:
        if resume:
            log.write(f"[sweep] continuing from {LAST_CKPT} ({time.strftime('%c')})\n")
            log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=preexec_fn
        )
        if started is not None:
            started(proc)
        rc = proc.wait()
    seconds = time.perf_counter() - start
    text = log_file.read_text()
    if stacked:  # the stack's log, beside its checkpoints and in every run's folder
        for run in runs:
            # (a stack that failed before its first row gave its empty run folders back)
            run.dir(out).mkdir(parents=True, exist_ok=True)
            (run.dir(out) / "run.log").write_text(text)
    return [record_status(run, out, rc, seconds, text, cmd, resume) for run in runs]


class LocalExecutor:
    """Runs the work in ``jobs`` processes side by side on this machine.

    SIGTERM or SIGINT to the sweep is passed on to every training process: each stops after
    the step it is in and records itself "interrupted"; no new work starts, the statuses and
    results.csv are written, and the same command later continues every interrupted run from
    its last.ckpt.

    Args:
        jobs: processes at once.
        threads: threads per process (OMP_NUM_THREADS).
    """

    def __init__(self, jobs: int, threads: int) -> None:
        self.jobs, self.threads = jobs, threads
        self.stopped_by: int | None = None  # the signal that stopped the sweep, if any
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def describe(self, stack: int) -> str:
        return f"{self.jobs} jobs × {self.threads} threads, up to {stack} seeds stacked per job"

    def run(self, spec: dict, work: list[list[Run]], out: Path) -> list[dict]:
        """Trains every piece of ``work``; prints each run's line as it ends."""

        def one(group: list[Run]) -> list[dict]:
            if self.stopped_by is not None:
                return []  # the sweep was stopped: nothing new starts
            statuses = execute_stack(spec, group, out, self.threads, started=self._started)
            with self._lock:
                for run, status in zip(group, statuses, strict=True):
                    print(report_line(run, status), flush=True)
            return statuses

        with self._signals():
            with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                return [status for statuses in pool.map(one, work) for status in statuses]

    def _started(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs = {p for p in self._procs if p.poll() is None} | {proc}
            if self.stopped_by is not None:  # started as the sweep was being stopped
                proc.send_signal(signal.SIGTERM)

    def _stop(self, signum: int, _frame) -> None:
        self.stopped_by = signum
        print(
            f"[sweep] {signal.Signals(signum).name}: stopping the runs at their next step; "
            "run the same command again to continue them from their last.ckpt",
            flush=True,
        )
        with self._lock:
            for proc in self._procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)

    @contextlib.contextmanager
    def _signals(self):
        """SIGTERM and SIGINT stop the sweep's runs as above (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
