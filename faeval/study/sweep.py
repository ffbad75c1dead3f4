"""``faeval sweep``: methods × seeds × settings from one YAML, the seeds of each stacked.

Usage:
    faeval sweep configs/sweeps/fmnist_reference.yaml --out sweeps/fmnist_reference
    faeval sweep SPEC.yaml --out DIR [--seeds 0-9] [--methods DFA,FA] [--set KEY=VALUE ...]
        [--jobs N] [--threads T] [--stack K] [--dry_run]
    faeval sweep SPEC.yaml --out DIR --executor slurm [--partition P] [--time MIN]
        [--cpus_per_task N] [--gpus_per_node N] [--mem_gb G] [--array_parallelism N]
        [--sbatch KEY=VALUE ...] [--stack K] [--no_wait] [--dry_run]

The YAML is described in ``faeval.study.spec`` (base, seeds, methods, settings, args,
protocol, slurm); ``--seeds``, ``--methods`` and ``--set`` override it, and the whole of it is
checked (every setting's options parsed as ``faeval fit`` parses them) before anything runs.

Each run lives in DIR/runs/<setting>/<method>/seed<S>/ (config.yaml, diagnostics.jsonl,
checkpoints/last.ckpt, end.json, run.log, status.json). The sweep can be started again at
any time (``faeval.study.state``): a run that finished (its planned epochs, or a recorded
stop such as the (b) floor) or diverged is kept; one that was interrupted (SIGTERM, SIGINT,
scancel, a time limit, SIGKILL, a lost node) continues from its checkpoints/last.ckpt, bit
for bit; one that failed by its own error starts again from scratch, its earlier folder kept
as DIR/attempts/<setting>/<method>/seed<S>-<time>/.

The seeds of a (setting, method) train stacked in one process (``faeval fit --seeds``: each
seed still an ordinary run in its own folder; the stack's own config, checkpoints/last.ckpt,
stack.json and log go to DIR/stacks/<setting>/<method>/seeds<list>/). An interrupted stack
continues from its own last.ckpt as a whole; a seed whose stack is gone or was cut otherwise
continues alone from its own last.ckpt. ``--stack 1`` runs one process per run.

Executors (``faeval.study.execute.LocalExecutor``, ``faeval.study.slurm.SlurmExecutor``):
``local``, the default: processes × threads × seeds per process chosen for the machine
unless given; SIGTERM or Ctrl-C to the sweep stops every run at its next step, recorded
"interrupted". ``slurm`` (``pip install 'faeval[slurm]'``): one Slurm job array through
submitit, one task per stack (or run) not yet finished, resources from the spec's ``slurm:``
with the command line's options on top; requeue before a time limit (USR2) continues from
last.ckpt.

Prints one line per run as it ends and, at the end, the throughput in seed-epochs per second.
Writes DIR/sweep.json (the plan) and DIR/results.csv (one row per run). Then: faeval report DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from faeval.errors import FaevalError
from faeval.study.execute import LocalExecutor
from faeval.study.layout import chunks, cpu_alone, gpu_count, layout, slurm_stack
from faeval.study.plan import LAST_CKPT, Run, command, plan, stack_dir, stacked_command
from faeval.study.spec import check_runs, load_spec
from faeval.study.state import SETTLED, continues, run_state, write_results


def parser() -> argparse.ArgumentParser:
    """``faeval sweep``'s options."""
    p = argparse.ArgumentParser(
        prog="faeval sweep",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="The spec's format, the executors and resuming: see docs/sweeps.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", type=Path, help="the sweep YAML")
    p.add_argument("--out", type=Path, required=True, help="the sweep directory")
    p.add_argument("--seeds", help="replaces the spec's seeds: 0-9, or 0,2,5-7")
    p.add_argument("--methods", help="replaces the spec's methods: DFA,FA")
    p.add_argument(
        "--set",
        action="append",
        dest="sets",
        metavar="KEY=VALUE",
        help="a faeval fit option for every run (repeatable): --set trainer.max_epochs=2",
    )
    p.add_argument(
        "--jobs", type=int, help="processes side by side (local; default: for the machine)"
    )
    p.add_argument(
        "--cores",
        type=int,
        default=os.cpu_count() or 1,
        help="cores to share out (local; with --jobs alone, threads per job = cores // jobs)",
    )
    p.add_argument("--threads", type=int, help="threads per process (local)")
    p.add_argument(
        "--stack",
        type=int,
        help="seeds of a (setting, method) stacked per process or task; 1: one per run",
    )
    p.add_argument("--dry_run", action="store_true", help="print what would run; write nothing")
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local process pool, or one Slurm job array through submitit",
    )
    slurm = p.add_argument_group("Slurm (--executor slurm; over the spec's slurm:)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--time", type=int, help="minutes per run (sbatch --time)")
    slurm.add_argument("--cpus_per_task", type=int, help="CPUs per run (default 1)")
    slurm.add_argument("--gpus_per_node", type=int, help="GPUs per run")
    slurm.add_argument("--mem_gb", type=int, help="memory per run, GB")
    slurm.add_argument("--array_parallelism", type=int, help="array tasks running at once")
    slurm.add_argument("--signal_delay_s", type=int, help="USR2 this long before the limit")
    slurm.add_argument(
        "--sbatch",
        action="append",
        type=_sbatch_option,
        metavar="KEY=VALUE",
        help="any other sbatch option (repeatable): --sbatch account=lab --sbatch qos=high",
    )
    slurm.add_argument(
        "--no_wait", action="store_true", help="return once submitted (tasks write results)"
    )
    return p


def _sbatch_option(value: str) -> tuple[str, str]:
    if "=" not in value:
        raise argparse.ArgumentTypeError(f"--sbatch takes KEY=VALUE, got {value!r}")
    key, _, val = value.partition("=")
    return key, val


def write_plan(out: Path, spec_path: Path, spec: dict, runs: list[Run]) -> None:
    """DIR/sweep.json: the spec as resolved and every planned run."""
    plan_record = {
        "spec": str(spec_path),
        "base": spec.get("base"),
        "seeds": spec["seeds"],
        "methods": sorted({r.method for r in runs}),
        "settings": sorted({r.setting for r in runs}),
        "resolved": {k: v for k, v in spec.items() if k != "slurm"},
        "runs": [
            {"setting": r.setting, "method": r.method, "seed": r.seed, "run_dir": str(r.dir(out))}
            for r in runs
        ],
    }
    temp = out / f".sweep.json.{os.getpid()}.tmp"
    temp.write_text(json.dumps(plan_record, indent=1))
    os.replace(temp, out / "sweep.json")


def main(argv: list[str] | None = None) -> int:
    """``faeval sweep``; returns the exit code (2: a mistake in the spec or options, nothing
    started; 1: some run failed; 128 + N: stopped by signal N)."""
    args = parser().parse_args(argv)
    for name in ("jobs", "threads", "stack"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"faeval sweep: error: --{name} must be >= 1, got {getattr(args, name)}",
                  file=sys.stderr)  # fmt: skip
            return 2
    try:
        spec = load_spec(args.spec, args.seeds, args.methods, args.sets)
        runs = plan(spec)
        problems = check_runs(spec, runs)
        if problems:
            print("\n".join(f"faeval sweep: error: {p}" for p in problems), file=sys.stderr)
            print(f"faeval sweep: {args.spec}: nothing was started", file=sys.stderr)
            return 2
        if args.executor == "slurm":
            from faeval.study.slurm import SlurmExecutor, resources_text, slurm_options

            options = slurm_options(spec, args)
    except FaevalError as err:
        print(f"faeval sweep: error: {err}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    states = {r: run_state(r.dir(out)) for r in runs}
    todo = [r for r in runs if states[r] not in SETTLED]
    seeds = len(spec["seeds"])
    if args.executor == "slurm":
        executor = SlurmExecutor(options, runs, wait=not args.no_wait)
        gpus = int(options.get("gpus_per_node") or 0)
        stack = args.stack or slurm_stack(seeds, gpus)
    else:
        groups = len({(r.setting, r.method) for r in todo})
        gpus = gpu_count()
        jobs, threads, stack = layout(groups, seeds, args.cores, gpus)
        jobs = args.jobs or jobs
        threads = args.threads or (max(1, args.cores // jobs) if args.jobs else threads)
        executor = LocalExecutor(jobs, threads)
        stack = args.stack or stack
    work = chunks(todo, stack, out, cpu_alone(gpus, args.stack is not None))
    most = max((len(g) for g in work), default=stack)
    go_on = sum(len(group) for group in work if continues(out, group))
    counts = {s: sum(v == s for v in states.values()) for s in ("ok", "diverged")}
    print(
        f"[sweep] {len(runs)} runs: {counts['ok']} finished, {counts['diverged']} diverged, "
        f"{len(todo)} to run ({go_on} continuing from their last checkpoint) as "
        f"{executor.describe(most)}",
        flush=True,
    )
    if args.dry_run:
        if args.executor == "slurm" and work:
            print(f"[sweep] Slurm array of {len(work)} tasks: {resources_text(options)}")
        for group in work:
            if len(group) == 1:
                folder, cmd = group[0].dir(out), command(spec, group[0], group[0].dir(out))
            else:
                folder, cmd = stack_dir(out, group), stacked_command(spec, group, out)
            if continues(out, group):
                cmd += ["--ckpt_path", str(folder / LAST_CKPT)]
            print(shlex.join(cmd))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    write_plan(out, args.spec, spec, runs)
    start = time.perf_counter()
    done = executor.run(spec, work, out)
    wall = time.perf_counter() - start
    results = write_results(out, runs)
    if args.executor == "slurm" and args.no_wait:
        return 0
    epochs = sum(s.get("epochs") or 0 for s in done)
    by_state = {
        s: sum(d["status"] == s for d in done) for s in ("ok", "diverged", "interrupted", "failed")
    }
    rate = epochs / wall if wall > 0 else 0.0
    print(
        "[sweep] " + ", ".join(f"{n} {s}" for s, n in by_state.items()) + f"; {epochs} "
        f"seed-epochs in {wall:.1f} s = {rate:.3f} seed-epochs/s ({executor.describe(most)})\n"
        f"[sweep] results: {results}\n[sweep] report: faeval report {args.out}",
        flush=True,
    )
    if executor.stopped_by is not None:
        return 128 + executor.stopped_by
    if by_state["interrupted"]:
        print(
            f"[sweep] {by_state['interrupted']} runs interrupted: the same command continues "
            "them from their last.ckpt",
            flush=True,
        )
        return 1
    return 1 if by_state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
