"""faeval sweep --executor slurm on the single-node cluster of tools/slurm_cluster.sh.

The tests start the cluster when none answers and they run as root (``tools/slurm_cluster.sh``
installs Slurm with apt-get); otherwise they fail saying how to start one (they never skip).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from faeval.cli import run
from faeval.errors import ConfigError
from faeval.runend import read_end
from faeval.runlog import read_rows
from faeval.study import slurm
from faeval.study.plan import Run
from tests.helpers import TINY_RUN
from tests.study.sweeps import ROOT, SPEC, sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def srun_answers() -> bool:
    try:
        done = subprocess.run(
            ["srun", "--quiet", "--time=1", "hostname"], capture_output=True, timeout=60
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def cluster(monkeypatch_module) -> None:
    """A Slurm cluster answering ``srun`` (started here when none does and this is root); the
    tasks import faeval and tests from here."""
    if not srun_answers() and os.geteuid() == 0:
        subprocess.run(["bash", str(ROOT / "tools" / "slurm_cluster.sh")], check=False)
    if not srun_answers():
        pytest.fail(
            "no Slurm cluster answers `srun hostname`: start one with `bash "
            "tools/slurm_cluster.sh` (as root; it installs slurm-wlm and munge)"
        )
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch_module.setenv("PYTHONPATH", path)  # sbatch passes the environment on


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def squeue(task: str) -> str:
    """The state of an array task (PD, R …), empty once it left the queue."""
    cmd = ["squeue", "--noheader", "--array", "--format=%t", "--jobs", task]
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def sweep_signalled_after_epoch_1(spec: Path, out: Path, run_dir: Path) -> str:
    """Runs the sweep on the cluster; once ``run_dir`` has trained epoch 1, sends task 0 of
    the array Slurm's warning before its time limit (USR2, as ``--signal=USR2@90`` does) and
    lets the requeued task start. Returns task 0's id once the sweep has ended well."""
    with ThreadPoolExecutor(1) as pool:
        swept = pool.submit(sweep.main, [str(spec), "--out", str(out), "--executor", "slurm"])
        deadline = time.monotonic() + 240
        while len(read_rows(run_dir / "diagnostics.jsonl")) < 2:  # epoch 1 is done
            assert time.monotonic() < deadline and not swept.done(), "the task never trained"
            time.sleep(0.2)
        # Task i of the array runs the i-th planned run (or stack): DFA's comes first.
        task = next((out / "slurm").glob("*_0")).name
        subprocess.run(["scancel", "--signal=USR2", task], check=True)
        start_requeued(task, swept, deadline)
        assert swept.result(timeout=300) == 0
    return task


def start_requeued(task: str, swept, deadline: float) -> None:
    """Lets a requeued task start now rather than after Slurm's two-minute hold (BeginTime).

    On this small cluster Slurm now and then loses the requeue (the task ends "failed" while
    it stops): the sweep then submits the run again, to continue from its last.ckpt all the
    same, so a task that has left the queue is left to the sweep.
    """
    gone_since = None
    while "PD" not in (state := squeue(task)):
        assert time.monotonic() < deadline and not swept.done(), "never requeued"
        gone_since = (gone_since or time.monotonic()) if not state else None
        if gone_since and time.monotonic() - gone_since > 5:
            return
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], capture_output=True)


def results(out: Path) -> list[dict]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_a_slurm_sweep_gives_the_local_sweeps_results(cluster, swept, tmp_path, capsys):
    out = tmp_path / "slurm"
    args = [str(swept / "spec.yaml"), "--out", str(out), "--executor", "slurm"]
    start = time.perf_counter()
    assert sweep.main(args) == 0
    seconds = time.perf_counter() - start
    printed = capsys.readouterr().out
    # One task per (setting, method): its two seeds stacked, as the local sweep stacked them.
    assert "(2 tasks)" in printed and "4 ok, 0 diverged, 0 interrupted, 0 failed" in printed
    local, slurm = results(swept / "out"), results(out)
    for row in local + slurm:
        del row["seconds"]  # the one column that is not the runs' own
    assert slurm == local
    jobs = {}
    for path in out.glob("runs/*/*/*/status.json"):
        status = json.loads(path.read_text())
        jobs.setdefault(status["slurm_job"], []).append((status["method"], status["seed"]))
    assert len({j.split("_")[0] for j in jobs}) == 1 and len(jobs) == 2  # one array
    assert sorted(sorted(runs) for runs in jobs.values()) == [
        [("DFA", 0), ("DFA", 1)],
        [("FrozenBlocks", 0), ("FrozenBlocks", 1)],
    ]
    print(f"slurm sweep of 4 tiny runs in 2 stacks: {seconds:.1f} s")
    # Submitted again: every run is finished, nothing goes to the cluster.
    assert sweep.main(args) == 0
    assert "4 runs: 4 finished, 0 diverged, 0 to run" in capsys.readouterr().out


def test_dry_run_shows_the_array_and_resources_without_submitting(tmp_path, capsys):
    spec = {**SPEC, "slurm": {"partition": "gpu", "time": 30, "sbatch": {"account": "lab"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    argv = [str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--executor", "slurm",
            "--dry_run", "--time", "45", "--cpus_per_task", "2", "--gpus_per_node", "1",
            "--mem_gb", "3", "--sbatch", "qos=high"]  # fmt: skip
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("[sweep] Slurm array of 2 tasks: "))
    wanted = ["partition=gpu", "time=45", "cpus_per_task=2", "gpus_per_node=1", "mem=3GB",
              "account=lab", "qos=high"]  # fmt: skip
    assert set(wanted) <= set(line.split(": ", 1)[1].split(", ")), line
    assert out.count("-m faeval fit") == 2 and out.count("--seeds 0,1") == 2  # stacked
    assert sweep.main([*argv, "--stack", "1"]) == 0  # one task per run
    out = capsys.readouterr().out
    assert "Slurm array of 4 tasks" in out and out.count("-m faeval fit") == 4
    assert "--seeds" not in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    with pytest.raises(ConfigError, match=r"unknown keys.*'partiton'"):
        slurm.slurm_options({"slurm": {"partiton": "x"}}, object())


def test_a_task_between_its_requeue_and_pending_counts_as_queued(monkeypatch):
    # squeue's default states hide RQ (requeued): a sweep polling then took the task as
    # ended and reported "interrupted, not requeued" while Slurm was about to run it again.
    listing = "7_0 RQ\n7_1 R\n7_2 CD\n7_3 F\n7_4 PD\n7_5 CG\n"
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=listing, stderr="")

    monkeypatch.setattr(slurm.subprocess, "run", fake_run)
    assert slurm.queued(["7_0", "7_3"]) == {"7_0", "7_1", "7_4", "7_5"}
    assert "--states=all" in seen[0]


def test_a_requeued_task_missing_from_the_queue_for_a_moment_is_waited_for(tmp_path, monkeypatch):
    # Between a requeued task's stop and its return to pending, squeue can leave it out: the
    # sweep waits (grace) for a task whose run is "interrupted" instead of calling it lost.
    run = Run("s", "DFA", 0, ())
    run.dir(tmp_path).mkdir(parents=True)
    status = run.dir(tmp_path) / "status.json"
    status.write_text(json.dumps({"status": "interrupted", "requeued": True}))
    polls = iter([set(), {"7_0"}, set(), set()])  # gone, back (pending), then ended

    def fake_queued(job_ids):
        answer = next(polls)
        if not answer and status.read_text().count("interrupted") and seen["polls"] >= 2:
            status.write_text(json.dumps({"status": "ok", "epochs": 4}))  # the requeued run
        seen["polls"] += 1
        return answer

    seen = {"polls": 0}
    monkeypatch.setattr(slurm, "queued", fake_queued)
    job = type("Job", (), {"job_id": "7_0"})()
    done = slurm.wait_slurm([job], [[run]], tmp_path, poll=0, grace=3600)
    assert [d["status"] for d in done] == ["ok"] and seen["polls"] == 3
    # With no grace left, an interrupted run out of the queue stays interrupted (a run again
    # of the sweep continues it); one cancelled by the user is not submitted again.
    status.write_text(json.dumps({"status": "interrupted", "requeued": True}))
    monkeypatch.setattr(slurm, "queued", lambda job_ids: set())
    done = slurm.wait_slurm([job], [[run]], tmp_path, poll=0, grace=0)
    assert done[0]["status"] == "interrupted"
    status.write_text(json.dumps({"status": "interrupted", "ended": "SIGTERM"}))
    done = slurm.wait_slurm([job], [[run]], tmp_path, poll=0, grace=0, resubmit=pytest.fail)
    assert done[0]["status"] == "interrupted"

    # A requeue Slurm lost (the task ended "failed" while its run says "interrupted") is
    # submitted again; the new task continues the run to its end.
    resubmitted = []

    def resubmit(group):
        resubmitted.append(group)
        status.write_text(json.dumps({"status": "ok", "epochs": 4}))  # what the task will do
        return type("Job", (), {"job_id": f"8_{len(resubmitted)}"})()

    status.write_text(json.dumps({"status": "interrupted", "requeued": True}))
    done = slurm.wait_slurm([job], [[run]], tmp_path, poll=0, grace=0, resubmit=resubmit)
    assert resubmitted == [[run]] and [d["status"] for d in done] == ["ok"]


#: 4 epochs of 4 steps, last.ckpt after every step; Throttle makes each step take 0.4 s.
SLOW = {"seeds": [0], "methods": ["DFA"], "protocol": False,
        "args": [*TINY_RUN, "--trainer.max_epochs", "4", "--data.random_targets", "true",
                 "--checkpoint_every_n_steps", "1"]}  # fmt: skip
THROTTLE = ["--trainer.callbacks+=tests.helpers.Throttle", "--trainer.callbacks.seconds", "0.4"]


def test_a_task_signalled_before_its_time_limit_is_requeued_and_resumes_exactly(cluster, tmp_path):
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({**SLOW, "args": [*SLOW["args"], *THROTTLE]})
    )
    out = tmp_path / "requeue"
    run_dir = out / "runs" / "default" / "DFA" / "seed0"
    dfa_task = sweep_signalled_after_epoch_1(tmp_path / "spec.yaml", out, run_dir)

    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "ok" and status["continued"] >= 1
    assert "[sweep] continuing from checkpoints/last.ckpt" in (run_dir / "run.log").read_text()
    log = "".join(p.read_text() for p in (out / "slurm").glob(f"{dfa_task}/*_log.err"))
    assert "Caught signal SIGUSR2" in log  # submitit checkpointed the task and requeued it
    rows = read_rows(run_dir / "diagnostics.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    straight = run(["fit", "--model", "DFA", "--seed_everything", "0", *SLOW["args"],
                    "--trainer.default_root_dir", str(tmp_path / "straight")])  # fmt: skip
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    want = straight.model.state_dict()
    assert final.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(final[key], value), key


#: SLOW for two seeds stacked in one task: each checkpoint write (two seeds' and the stack's
#: after every step) takes 0.15 s more.
STACKED = {**SLOW, "seeds": [0, 1],
           "args": [*SLOW["args"], "--trainer.plugins", "tests.helpers.SlowWrites",
                    "--trainer.plugins.seconds", "0.15"]}  # fmt: skip


def test_a_stacked_task_signalled_before_its_time_limit_resumes_its_stack_exactly(
    cluster, tmp_path
):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(STACKED))
    out = tmp_path / "requeue"
    runs = [out / "runs" / "default" / "DFA" / f"seed{seed}" for seed in (0, 1)]
    stack = out / "stacks" / "default" / "DFA" / "seeds0-1"
    # Task 0 of the array is DFA's stack of seeds 0 and 1 (FrozenBlocks' is task 1).
    sweep_signalled_after_epoch_1(tmp_path / "spec.yaml", out, runs[1])

    assert "[sweep] continuing from checkpoints/last.ckpt" in (stack / "run.log").read_text()
    straight = run(["fit", "--model", "DFA", "--seeds", "0,1", *STACKED["args"],
                    "--trainer.default_root_dir", str(tmp_path / "straight")])  # fmt: skip
    assert straight.trainer.global_step == 16
    for seed, run_dir in enumerate(runs):
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "ok" and status["continued"] >= 1
        assert "--seeds" in status["cmd"] and "--ckpt_path" in status["cmd"]
        assert [r["epoch"] for r in read_rows(run_dir / "diagnostics.jsonl")] == [0, 1, 2, 3, 4]
        final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
        want = torch.load(
            tmp_path / "straight" / "lightning_logs" / "SyntheticLadder" / "DFA" / f"seed{seed}"
            / "checkpoints" / "last.ckpt", weights_only=True,
        )["state_dict"]  # fmt: skip
        assert final["state_dict"].keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(final["state_dict"][key], value), (seed, key)


def test_a_cancelled_task_is_interrupted_and_the_sweep_started_again_continues_it(
    cluster, tmp_path
):
    """``scancel`` (SIGTERM to the task) mid-run: the run says ``interrupted``, never ``ok``
    at epoch 1; the same command continues it from last.ckpt to an uninterrupted run's end."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SLOW, "args": [*SLOW["args"], *THROTTLE]}))
    out = tmp_path / "cancelled"
    run_dir = out / "runs" / "default" / "DFA" / "seed0"
    args = [str(spec), "--out", str(out), "--executor", "slurm"]
    with ThreadPoolExecutor(1) as pool:
        swept = pool.submit(sweep.main, args)
        deadline = time.monotonic() + 240
        while len(read_rows(run_dir / "diagnostics.jsonl")) < 2:  # epoch 1 is done
            assert time.monotonic() < deadline and not swept.done(), "the task never trained"
            time.sleep(0.2)
        task = next((out / "slurm").glob("*_0")).name  # DFA's run is task 0
        subprocess.run(["scancel", task], check=True)
        assert swept.result(timeout=300) == 1  # a run is interrupted: the sweep is not done
    assert read_end(run_dir)["state"] == "interrupted"
    row = {r["method"]: r for r in results(out)}["DFA"]
    assert row["status"] == "interrupted" and row["epochs"] != "4"

    assert sweep.main(args) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "ok" and status["continued"] == 1
    assert {r["method"]: r for r in results(out)}["DFA"]["continued"] == "1"
    assert [r["epoch"] for r in read_rows(run_dir / "diagnostics.jsonl")] == [0, 1, 2, 3, 4]
    straight = run(["fit", "--model", "DFA", "--seed_everything", "0", *SLOW["args"],
                    "--trainer.default_root_dir", str(tmp_path / "straight")])  # fmt: skip
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(final[key], value), key
