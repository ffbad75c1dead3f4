"""``faeval fit --seeds 0-9``: the command line's way into a stack.

``add_stack_arguments`` adds ``--seeds`` and ``--stack.*`` to ``faeval fit``; when ``--seeds``
is given, ``StackedFit`` replaces the CLI's instantiation: it builds one method and one data
module per seed from the same parsed configuration, seeding each construction with its seed
as a lone run's ``--seed_everything`` does, claims one run folder per seed (and one for the
stack itself: its config, ``stack.json`` and checkpoints), and hands the CLI a ``SeedStack``,
its ``StackedData`` and a trainer whose ``SeedRuns`` callback writes every seed's run.

A stack keeps ``STACK/checkpoints/last.ckpt`` as a lone run keeps its own (``faeval.resume``:
every epoch and, with ``--checkpoint_every_n_steps``, every N steps, written atomically), and
each seed's folder gets its own ``checkpoints/last.ckpt`` beside it. A stack resumes from its
own checkpoint, mid-epoch too: ``faeval fit --config STACK/config.yaml --ckpt_path
STACK/checkpoints/last.ckpt``; each seed's rows go on in its own folder. Model options given
with it that contradict the stack's are refused, as for a lone run (``check_stack_resume``).
"""

from __future__ import annotations

import copy
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar

from faeval.callbacks import Diagnostics, LastCheckpoint, LineProgress, Protocol
from faeval.cli.folders import folder_logger, log_root
from faeval.errors import ConfigError
from faeval.protocol.checkpoint import load_lightning_checkpoint
from faeval.resume import check_resume_options
from faeval.runs import holds_run
from faeval.stacked.convert import RUN_ALONE, NotStackable
from faeval.stacked.data import StackedData
from faeval.stacked.module import HPARAMS_KEY, SeedStack
from faeval.stacked.runs import SeedRun, SeedRuns

#: The stack's record in its folder: its seeds and their run folders.
STACK_FILE = "stack.json"


@dataclass(frozen=True)
class StackSettings:
    """How a stacked run (``--seeds``) trains and where it writes.

    Args:
        compile: compile each step's forward, credits and objective (``torch.compile``).
        run_dirs: each seed's run folder, a template with ``{seed}`` (default: the run name
            under ``<trainer.default_root_dir>/lightning_logs``, as for a lone run).
        dir: the stack's own folder (its config, stack.json and checkpoints); default
            ``lightning_logs/<data>/<method>/stack-<seeds>``.
    """

    compile: bool = False
    run_dirs: str | None = None
    dir: str | None = None


class FitCommand(typing.Protocol):
    """What a stack needs of the command line (``FaevalCLI``'s public interface): the parsed
    options, and the lone run's own ways of claiming a run folder and building a trainer."""

    subcommand: str | None
    config: Any
    parser: Any

    def option(self, key: str, default=None): ...
    def subcommand_parser(self): ...
    def checkpointing(self, trainer_config: dict) -> dict[str, list]: ...
    def progress_callbacks(self, callbacks, trainer_config: dict) -> list: ...
    def build_trainer(
        self, config: dict, extra_callbacks=(), config_filename: str | None = None
    ) -> Trainer: ...
    def run_fields(self, model=None, datamodule=None, seed=None) -> dict[str, object]: ...
    def claim(self, folder: Path, info: dict | None = None, *, next_free: bool = False) -> Path: ...
    def claim_run(self, fields: dict[str, object]) -> Path: ...


@dataclass(frozen=True)
class BuiltStack:
    """What ``StackedFit.build`` hands the command line in place of its own instantiation."""

    config_init: Any
    model: SeedStack
    datamodule: StackedData
    trainer: Trainer


def add_stack_arguments(parser) -> None:
    """``--seeds`` and ``--stack.*`` on ``faeval fit``."""
    parser.add_argument(
        "--seeds",
        type=str | None,
        default=None,
        help=(
            "Train these seeds of the configuration at once in this process, e.g. 0-9 or "
            "0,2,5-7: one run folder per seed, each exactly as if trained alone, one optimizer "
            "step for all (overrides --seed_everything)."
        ),
    )
    parser.add_class_arguments(StackSettings, "stack")


def check_lone_run(subcommand: str, seeds, settings) -> None:
    """Refuses stack options where no stack is trained (they would be ignored).

    Raises:
        ConfigError: ``--seeds`` on another subcommand than fit, or a ``--stack`` option
            without ``--seeds``.
    """
    if seeds is not None:
        raise ConfigError(
            f"faeval {subcommand} reads one run: point it at a seed's own run folder or "
            "config (lightning_logs/<data>/<method>/seed<S>), not at a stack's"
        )
    given = [k for k, v in vars(StackSettings()).items() if getattr(settings, k, v) != v]
    if given:
        raise ConfigError(
            f"--stack.{given[0]} applies to stacked runs; add --seeds (for one seed: --seeds S)"
        )


def parse_seeds(spec: str | int) -> list[int]:
    """``"0-3,7"`` -> [0, 1, 2, 3, 7].

    Raises:
        ConfigError: not a list of integers and ranges, a range backwards (5-3), a seed
            given twice, or one that numpy cannot take.
    """
    try:
        ranges = [
            (int(first), int(last or first))
            for first, _, last in (p.partition("-") for p in str(spec).replace(" ", "").split(","))
        ]
    except ValueError:
        raise ConfigError(
            f"--seeds {spec!r} is not a list of seeds; write e.g. 0-9 or 0,2,5-7"
        ) from None
    for first, last in ranges:
        if last < first:  # an empty range: its seeds would be left out without a word
            raise ConfigError(
                f"--seeds {spec!r}: {first}-{last} names no seed; write {last}-{first}"
            )
    seeds = [seed for first, last in ranges for seed in range(first, last + 1)]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {spec!r} names no seed, or one seed twice")
    if max(seeds) > MAX_SEED:
        raise ConfigError(f"--seeds {spec!r}: a seed is an integer from 0 to {MAX_SEED}")
    return seeds


def format_seeds(seeds: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> ``"0-3,7"``."""
    parts, start = [], seeds[0]
    for prev, seed in zip(seeds, [*seeds[1:], None], strict=True):
        if seed != prev + 1 if seed is not None else True:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = seed
    return ",".join(parts)


#: Callbacks a stack knows how to run per seed or leaves as they are (a ``ModelCheckpoint``,
#: ``LastCheckpoint`` included, saves the stack and, through ``SeedRuns``, every seed).
KNOWN_CALLBACKS = (
    Diagnostics,
    Protocol,
    ModelCheckpoint,
    LastCheckpoint,
    ModelSummary,
    ProgressBar,
    LineProgress,
)


def check_stack_resume(given, ckpt_path: str | Path) -> None:
    """``check_resume_options`` for a stack: the given model options against the hyperparameters
    its checkpoint recorded for its seeds (a stack's checkpoint has no method of its own).

    A checkpoint that is not a stack's is left to ``StackedFit``, which refuses it.

    Raises:
        ResumeConflict: naming each contradicting option and the checkpoint's value.
        CheckpointError: the file is not a readable Lightning checkpoint.
    """
    saved = load_lightning_checkpoint(ckpt_path).get(HPARAMS_KEY)
    if saved:
        check_resume_options(given, ckpt_path, saved=saved)


class StackedFit:
    """Builds a stacked ``faeval fit`` in place of the CLI's own instantiation.

    Args:
        cli: the command line, through its public interface (``FitCommand``).

    Raises:
        NotStackable: the configuration cannot be stacked (method, modules, optimizer,
            logger, callbacks or devices), with the reason.
        ConfigError: bad ``--seeds``, or a checkpoint that is not a stack's.
    """

    def __init__(self, cli: FitCommand) -> None:
        self.cli = cli
        self.seeds = parse_seeds(cli.option("seeds"))
        self.settings: StackSettings = cli.option("stack") or StackSettings()

    def build(self) -> BuiltStack:
        cli, sub = self.cli, self.cli.subcommand
        fit = cli.config[sub]
        inits = []
        for seed in self.seeds:  # each seed built as its lone run builds it
            config = copy.deepcopy(cli.config)
            config[sub].seed_everything = seed
            seed_everything(seed, workers=True, verbose=False)
            inits.append(cli.parser.instantiate_classes(config))
        seeds = [init[sub] for init in inits]
        methods = [init.model for init in seeds]
        datamodules = [init.data for init in seeds]
        trainer_config = {**seeds[0].trainer}
        self.check_trainer(trainer_config)
        # The stack is resumable as a lone run is (faeval.resume): last.ckpt every epoch and
        # every --checkpoint_every_n_steps, written atomically; its batches and epoch sums are
        # in it, so a mid-epoch resume continues exactly.
        trainer_config.update(cli.checkpointing(trainer_config))
        resumed = self.resumed_stack(fit.get("ckpt_path"))
        stack_dir, run_dirs = resumed or self.claim(methods, datamodules, trainer_config)
        runs = [
            SeedRun(
                seed,
                i,
                run_dirs[i],
                init.model,
                init.data,
                init.diagnostics,
                [c for c in init.trainer.get("callbacks") or [] if isinstance(c, Protocol)],
                None if init.trainer.get("logger") is False else folder_logger(run_dirs[i]),
            )
            for i, (seed, init) in enumerate(zip(self.seeds, seeds, strict=True))
        ]
        seed_runs = SeedRuns(
            runs, floor_stop=bool(fit.get("floor_stop")), grad_floor=runs[0].diagnostics.grad_floor
        )
        others = [c for c in trainer_config.get("callbacks") or [] if not isinstance(c, Protocol)]
        others = cli.progress_callbacks(others, trainer_config)  # as a lone run's
        trainer_config.update(
            callbacks=[*others, seed_runs], logger=False, default_root_dir=str(stack_dir)
        )
        if trainer_config.get("devices") in (None, "auto"):
            trainer_config["devices"] = 1  # one stack, one device
        config_name = "config.resumed.yaml" if resumed else "config.yaml"
        self.save_seed_configs(run_dirs, config_name)
        model = SeedStack(methods, compile=self.settings.compile)
        datamodule = StackedData(datamodules)
        trainer = cli.build_trainer(trainer_config, config_filename=config_name)
        return BuiltStack(inits[0], model, datamodule, trainer)

    def check_trainer(self, config: dict) -> None:
        """Refuses trainer settings a stack cannot honour per seed."""
        logger = config.get("logger")
        if logger not in (None, True, False):
            raise NotStackable(
                "a stacked run writes one TensorBoard run into each seed's folder; drop "
                "--trainer.logger (place the seed folders with --stack.run_dirs)"
            )
        devices, nodes = config.get("devices"), config.get("num_nodes") or 1
        one = devices in (None, "auto", 1, "1") or (isinstance(devices, list) and len(devices) == 1)
        if nodes > 1 or not one:
            raise NotStackable(
                f"a stack trains on one device (got devices={devices!r}, num_nodes={nodes}); "
                "run one stack per device"
            )
        for callback in config.get("callbacks") or []:
            if not isinstance(callback, KNOWN_CALLBACKS):
                raise NotStackable(
                    f"callback {type(callback).__name__} cannot run per seed in a stack; drop "
                    f"it or {RUN_ALONE}"
                )

    def claim(
        self,
        methods: list,
        datamodules: list[LightningDataModule],
        trainer_config: dict,
    ) -> tuple[Path, list[Path]]:
        """Claims the stack's folder and one run folder per seed (fresh runs only), each seed's
        as its lone run would claim it."""
        cli = self.cli
        run_dirs = []
        for seed, method, dm in zip(self.seeds, methods, datamodules, strict=True):
            if self.settings.run_dirs:
                run_dirs.append(cli.claim(Path(self.settings.run_dirs.format(seed=seed)), {}))
            else:
                run_dirs.append(cli.claim_run(cli.run_fields(method, dm, seed)))
        spec = format_seeds(self.seeds)
        info = {"stack": self.seeds, "runs": [str(d) for d in run_dirs]}
        if self.settings.dir:
            stack_dir = cli.claim(Path(self.settings.dir), info)
        else:
            root = log_root(trainer_config.get("default_root_dir"))
            data, method = type(datamodules[0]).__name__, type(methods[0]).__name__
            stack_dir = cli.claim(root / data / method / f"stack-{spec}", info, next_free=True)
        # Relative to the stack's folder: a sweep folder copied or moved whole resumes as well.
        rel = [os.path.relpath(d.resolve(), stack_dir.resolve()) for d in run_dirs]
        record = {"seeds": self.seeds, "run_dirs": rel}
        (stack_dir / STACK_FILE).write_text(json.dumps(record, indent=1))
        return stack_dir, run_dirs

    def resumed_stack(self, ckpt: str | None) -> tuple[Path, list[Path]] | None:
        """The stack's folder and its seeds' folders when ``ckpt`` is a stack's checkpoint.

        Raises:
            ConfigError: ``ckpt`` is not in a stack's folder, or the stack has other seeds.
        """
        if not ckpt:
            return None
        stack_dir = Path(ckpt).resolve().parent.parent
        record_file = stack_dir / STACK_FILE
        if not record_file.is_file() or not holds_run(stack_dir):
            raise ConfigError(
                f"{ckpt} is not a stack's checkpoint (no {STACK_FILE} in {stack_dir}); resume a "
                "stack from STACK/checkpoints/<file>.ckpt, or one seed without --seeds"
            )
        record = json.loads(record_file.read_text())
        if record["seeds"] != self.seeds:
            raise ConfigError(
                f"{ckpt} is the stack of seeds {format_seeds(record['seeds'])}, not "
                f"{format_seeds(self.seeds)}; resume it with its own config.yaml"
            )
        return stack_dir, [(stack_dir / d).resolve() for d in record["run_dirs"]]

    def save_seed_configs(self, run_dirs: list[Path], name: str) -> None:
        """Each seed's folder gets the config of its lone run: its seed, no --seeds."""
        cli = self.cli
        parser = cli.subcommand_parser()
        for seed, run_dir in zip(self.seeds, run_dirs, strict=True):
            config = copy.deepcopy(cli.config[cli.subcommand])
            config.seed_everything, config.seeds, config.ckpt_path = seed, None, None
            config.stack = parser.get_defaults().stack
            run_dir.mkdir(parents=True, exist_ok=True)
            parser.save(config, run_dir / name, skip_none=False, overwrite=True)
