"""The Slurm executor: a sweep's work as one Slurm job array, through submitit's public API.

Each task runs ``execute_stack`` for its piece of work, as the local executor does. Requeue
is submitit's checkpointing: Slurm sends USR2 ``signal_delay_s`` before a task's time limit
(and on preemption); ``SlurmRun.checkpoint`` stops the training process, marks its runs
interrupted and hands submitit the same task to requeue, which continues from last.ckpt. A
task cancelled with ``scancel`` (SIGTERM) records its runs "interrupted": the sweep run again
continues them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from faeval.errors import ConfigError
from faeval.study.execute import execute_stack
from faeval.study.plan import Run
from faeval.study.state import read_status, report_line, run_state, write_results, write_status

#: Environment variables a run does not inherit from a Slurm task: with them Lightning would
#: take the run for a process of a multi-process Slurm launch (and handle Slurm's signals).
SLURM_PREFIXES = ("SLURM_", "SLURMD_", "SUBMITIT_")

#: The Slurm resources a spec's ``slurm:`` and the command line may set (submitit's names).
SLURM_KEYS = (
    "partition",
    "time",
    "cpus_per_task",
    "gpus_per_node",
    "mem_gb",
    "array_parallelism",
    "signal_delay_s",
    "sbatch",
    "setup",
)


class SlurmRun:
    """One stack of runs (or one run) as a Slurm array task: ``execute_stack`` in the task,
    requeued on USR2.

    Submitit calls ``checkpoint`` from its USR2 handler (Slurm's warning before the time
    limit, or preemption): it stops the training process (SIGTERM, then SIGKILL), marks its
    runs "interrupted", and hands submitit the same task to requeue, which continues from
    checkpoints/last.ckpt (the stack's, or the run's). The training process ignores USR2, so
    that only this handler decides when it stops.
    """

    def __init__(
        self, spec: dict, group: list[Run], out: Path, threads: int, runs: list[Run]
    ) -> None:
        self.spec, self.group, self.out, self.threads, self.runs = spec, group, out, threads, runs
        self._proc: subprocess.Popen | None = None

    def __call__(self) -> list[dict]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(SLURM_PREFIXES)}
        job = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        statuses = execute_stack(
            self.spec,
            self.group,
            self.out,
            self.threads,
            started=self._started,
            env=env,
            preexec_fn=_ignore_usr2,
        )
        for run, status in zip(self.group, statuses, strict=True):
            status["slurm_job"] = "_".join(filter(None, job))
            write_status(run.dir(self.out), status)
        write_results(self.out, self.runs)
        return statuses

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def checkpoint(self, *args, **kwargs):
        """Stops the runs where their last checkpoint stands and returns the task to requeue."""
        import submitit

        if self._proc is not None:
            _stop(self._proc.pid)
        for run in self.group:
            run_dir = run.dir(self.out)
            status = {**(read_status(run_dir) or {}), "status": "interrupted",
                      "ended": "Slurm's USR2 (time limit or preemption): requeued",
                      "requeued": True, "setting": run.setting, "method": run.method,
                      "seed": run.seed, "run_dir": str(run_dir.relative_to(self.out))}  # fmt: skip
            write_status(run_dir, status)
        return submitit.helpers.DelayedSubmission(
            SlurmRun(self.spec, self.group, self.out, self.threads, self.runs)
        )


def _stop(pid: int, grace_s: float = 30.0) -> None:
    """SIGTERM (Lightning stops after the step it is in), SIGKILL after ``grace_s``.

    Waits with os.waitpid: this runs in a signal handler that interrupted Popen.wait in the
    same thread, which holds the Popen's (non-reentrant) wait lock.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.1)
    except ChildProcessError:
        pass  # already reaped


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def slurm_options(spec: dict, args) -> dict:
    """The Slurm resources: the spec's ``slurm:``, then the command line's on top.

    Raises:
        ConfigError: an unknown key under ``slurm:``.
    """
    options = dict(spec.get("slurm") or {})
    unknown = set(options) - set(SLURM_KEYS)
    if unknown:
        raise ConfigError(
            f"slurm: unknown keys {sorted(unknown)}; known: {', '.join(SLURM_KEYS)} (other "
            "sbatch options go under slurm.sbatch)"
        )
    for key in SLURM_KEYS:
        value = getattr(args, key, None)
        if key == "sbatch" and value:
            options["sbatch"] = {**(options.get("sbatch") or {}), **dict(value)}
        elif key != "sbatch" and value is not None:
            options[key] = value
    options.setdefault("cpus_per_task", 1)
    options.setdefault("time", 60)
    return options


def slurm_parameters(options: dict, name: str) -> dict:
    """submitit's SlurmExecutor parameters for the options."""
    params = {"job_name": name, "additional_parameters": dict(options.get("sbatch") or {})}
    for key in ("partition", "time", "cpus_per_task", "gpus_per_node", "array_parallelism",
                "signal_delay_s", "setup"):  # fmt: skip
        if options.get(key) is not None:
            params[key] = options[key]
    if options.get("mem_gb") is not None:
        params["mem"] = f"{options['mem_gb']}GB"
    return params


def submitit_module():
    """submitit, or a clear error naming the extra that installs it.

    Raises:
        ConfigError: submitit is not installed.
    """
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--executor slurm needs submitit: pip install 'faeval[slurm]' (or pip install submitit)"
        ) from None
    return submitit


def resources_text(options: dict) -> str:
    """The array's Slurm resources in one line (``--dry_run``)."""
    params = slurm_parameters(options, "sweep")
    extra = params.pop("additional_parameters")
    params.pop("job_name")
    return ", ".join(f"{k}={v}" for k, v in {**params, **extra}.items())


def submit_slurm(
    spec: dict, work: list[list[Run]], runs: list[Run], out: Path, options: dict
) -> list:
    """Submits one job array, one task per stack (or run); returns submitit's jobs."""
    submitit = submitit_module()
    executor = submitit.SlurmExecutor(folder=out / "slurm" / "%j", max_num_timeout=3)
    executor.update_parameters(**slurm_parameters(options, out.name))
    threads = int(options["cpus_per_task"])
    with executor.batch():
        jobs = [executor.submit(SlurmRun(spec, group, out, threads, runs)) for group in work]
    return jobs


#: Slurm job states a task does not leave again (squeue's short codes).
FINAL_STATES = {"BF", "CA", "CD", "DL", "F", "NF", "OOM", "PR", "RV", "TO"}


def queued(job_ids: list[str]) -> set[str]:
    """The array tasks not yet ended (squeue; sacct may be off on small clusters).

    Asks for every state: by default squeue hides a task in the brief "requeued" (RQ)
    state between its USR2 stop and its return to pending, and the sweep would read it as
    ended. A task is ended once squeue shows it in a final state or no longer knows it.

    Raises:
        RuntimeError: squeue fails (no cluster).
    """
    arrays = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["squeue", "--noheader", "--array", "--states=all", "--format=%i %t",
           "--jobs", ",".join(arrays)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode and "Invalid job id" not in done.stderr:
        raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
    rows = (line.split() for line in done.stdout.splitlines())
    return {row[0] for row in rows if len(row) == 2 and row[1] not in FINAL_STATES}


def wait_slurm(
    jobs: list,
    work: list[list[Run]],
    out: Path,
    poll: float = 2.0,
    grace: float = 10.0,
    resubmit: Callable[[list[Run]], object] | None = None,
    tries: int = 3,
) -> list[dict]:
    """Waits until every task has left the queue; prints each run's line as it ends.

    A task out of the queue whose runs are not all ended (a run "interrupted" for a requeue,
    or without a status) is given ``grace`` seconds to come back. A task whose requeue Slurm
    lost (its runs stay "interrupted": on a small cluster the task's own ``scontrol
    requeue`` can race with its batch script's exit, which then marks it failed) is
    submitted again through ``resubmit``, up to ``tries`` times; it continues from its
    last.ckpt as the requeued task would have.
    """
    pending = {job.job_id: group for job, group in zip(jobs, work, strict=True)}
    missing_since: dict[str, float] = {}
    tried: dict[tuple[Run, ...], int] = {}
    done = []
    while pending:
        time.sleep(poll)
        waiting = queued(list(pending))
        now = time.monotonic()
        for job_id in [j for j in pending if j not in waiting]:
            statuses = [read_status(run.dir(out)) for run in pending[job_id]]
            settled = all(s and s.get("status") not in (None, "interrupted") for s in statuses)
            if not settled and now - missing_since.setdefault(job_id, now) < grace:
                continue
            group = pending.pop(job_id)
            key = tuple(group)
            # USR2's requeue lost (not a task the user cancelled: that one stays interrupted)
            lost = any(s and s.get("requeued") for s in statuses)
            if lost and resubmit is not None and tried.get(key, 0) < tries:
                tried[key] = tried.get(key, 0) + 1
                job = resubmit(group)
                pending[job.job_id] = group
                names = ", ".join(f"{r.setting}/{r.method}/seed{r.seed}" for r in group)
                print(
                    f"[sweep] Slurm did not requeue task {job_id} ({names}): submitted again "
                    f"as {job.job_id}, continuing from its last.ckpt",
                    flush=True,
                )
                continue
            for run, status in zip(group, statuses, strict=True):
                status = status or {
                    "status": run_state(run.dir(out)),
                    "epochs": 0,
                    "ended": f"Slurm task {job_id} ended without a status: see {out / 'slurm'}",
                }
                print(report_line(run, status), flush=True)
                done.append(status)
        for job_id in waiting:
            missing_since.pop(job_id, None)
    return done


class SlurmExecutor:
    """Submits the work as one Slurm job array (one task per stack or run) and waits for it.

    Args:
        options: the Slurm resources (``slurm_options``).
        runs: every planned run (each task rewrites results.csv as it ends).
        wait: wait for the array (False: return once submitted).
    """

    def __init__(self, options: dict, runs: list[Run], wait: bool = True) -> None:
        self.options, self.runs, self.wait = options, runs, wait
        self.threads = int(options["cpus_per_task"])
        self.stopped_by: int | None = None  # a Slurm sweep is stopped with scancel, not here

    def describe(self, stack: int) -> str:
        return (
            f"one Slurm job array × {self.threads} threads per task, up to {stack} seeds "
            "stacked per task"
        )

    def run(self, spec: dict, work: list[list[Run]], out: Path) -> list[dict]:
        if not work:
            return []
        jobs = submit_slurm(spec, work, self.runs, out, self.options)
        print(
            f"[sweep] submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks); "
            f"submitit logs in {out / 'slurm'}",
            flush=True,
        )
        if not self.wait:
            return []

        def resubmit(group: list[Run]):
            return submit_slurm(spec, [group], self.runs, out, self.options)[0]

        return wait_slurm(jobs, work, out, resubmit=resubmit)
