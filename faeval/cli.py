"""``faeval``: LightningCLI over the methods, the data sets and the diagnostics callback.

faeval fit --model DFA --data CIFAR10
faeval fit --config configs/resmlp_d256_l4_dfa.yaml
faeval audit lightning_logs/version_0          # or a .ckpt file: the protocol's verdict
"""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

import faeval.backbones  # short names: --model.backbone ResMLP
import faeval.data
import faeval.methods
from faeval.callbacks import Diagnostics, FloorStopping
from faeval.data import InMemoryDataModule
from faeval.methods import CreditMethod
from faeval.protocol.audit import find_checkpoint, run_dir_of
from faeval.protocol.checkpoint import load_checkpoint
from faeval.runs import DEFAULT_RUN_NAME, LOGS, claim, claim_next, holds_run, run_name
from faeval.stacked.cli import StackedFit, add_stack_arguments, check_lone_run
from faeval.trainer import FaevalTrainer


def audit_arguments(path: str) -> list[str]:
    """``--config`` and ``--ckpt_path`` for ``faeval audit PATH`` (a run dir or a checkpoint).

    Raises:
        FileNotFoundError: no checkpoint there, or no ``config.yaml`` in its run directory.
        ValueError: the file is not a readable faeval checkpoint.
    """
    ckpt = find_checkpoint(path)
    load_checkpoint(ckpt)  # a clear error for a corrupt or foreign file, before parsing
    config = run_dir_of(ckpt) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(
            f"no config.yaml in {config.parent}, the run directory of {ckpt}; pass the run's "
            "config yourself: faeval audit --config RUN/config.yaml --ckpt_path CKPT"
        )
    return ["--config", str(config), "--ckpt_path", str(ckpt)]


def _subclasses(module, base: type) -> list[str]:
    return sorted(
        name
        for name in module.__all__
        if isinstance(cls := getattr(module, name), type)
        and issubclass(cls, base)
        and not inspect.isabstract(cls)
    )


def known_names() -> dict[str, list[str]]:
    """Short names the command line accepts for --model, --data and --model.backbone."""
    return {
        "model": _subclasses(faeval.methods, CreditMethod),
        "data": _subclasses(faeval.data, InMemoryDataModule),
        "model.backbone": _subclasses(faeval.backbones, faeval.backbones.LayeredBackbone),
    }


class FaevalParser(LightningArgumentParser):
    """Adds the accepted short names to errors about --model, --data or --model.backbone."""

    @override
    def error(self, message: str, ex: Exception | None = None):
        names = known_names()
        key = (
            "model.backbone"
            if "key='backbone'" in message
            else next((k for k in ("model", "data") if f'Parser key "{k}"' in message), None)
        )
        if key is not None:
            message += f"\n  --{key} takes one of: {', '.join(names[key])} (or a class path)"
        super().error(message, ex)


class FaevalCLI(LightningCLI):
    """LightningCLI with the diagnostics always on and a one-switch floor stop."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(Diagnostics, "diagnostics")
        parser.add_argument(
            "--floor_stop",
            type=bool,
            default=False,
            help="Stop the run once ‖g_L‖ < diagnostics.grad_floor (diagnostic (b)).",
        )
        parser.add_argument(
            "--run_name",
            type=str,
            default=DEFAULT_RUN_NAME,
            help=(
                "The run's folder under <trainer.default_root_dir>/lightning_logs, from the "
                "fields {data}, {method}, {backbone}, {seed}. The default name moves on to "
                "-run2, -run3… when taken; a name you give is refused when it holds a run."
            ),
        )
        add_stack_arguments(parser)  # --seeds, --stack.*: seeds stacked in one process (issue 13)
        parser.link_arguments(
            "data.input_shape", "model.init_args.input_shape", apply_on="instantiate"
        )
        parser.link_arguments(
            "data.num_classes", "model.init_args.num_classes", apply_on="instantiate"
        )

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "audit": {"model", "datamodule"}}

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        raw = sys.argv[1:] if args is None else args
        if (
            isinstance(raw, list)
            and raw[:1] == ["audit"]
            and len(raw) > 1
            and not str(raw[1]).startswith("-")
        ):
            self.config = parser.parse_args(["audit", *audit_arguments(raw[1]), *raw[2:]])
            return
        super().parse_arguments(parser, args)

    @override
    def _parse_ckpt_path(self) -> None:
        # audit loads its checkpoint itself (weights-only, with clear errors); the model comes
        # from the run's config.yaml, and the checkpoint's class is checked against it.
        if self.config.get("subcommand") != "audit":
            super()._parse_ckpt_path()

    @override
    def instantiate_classes(self) -> None:
        # `faeval fit --seeds 0-9` (issue 13): faeval.stacked builds one method and data module
        # per seed, the stack, its trainer and the seeds' run folders in place of the usual ones.
        if self.subcommand == "fit" and self._get(self.config, "seeds") is not None:
            StackedFit(self).instantiate()
            return
        check_lone_run(
            self.subcommand, self._get(self.config, "seeds"), self._get(self.config, "stack")
        )
        super().instantiate_classes()

    @override
    def instantiate_trainer(self, **kwargs):
        default_logger = self._trainer_config().get("logger") in (None, True)
        claim_explicit = False
        if self.subcommand == "fit":
            run_dir = self._resumed_run_dir()
            if run_dir is not None:  # --ckpt_path continues the run in its own folder
                if default_logger:
                    kwargs["logger"] = folder_logger(run_dir)
                self.save_config_kwargs["config_filename"] = "config.resumed.yaml"
            elif default_logger:
                kwargs["logger"] = folder_logger(self._claim_named_run())
            else:  # a logger the user configured: its folder must be a new one
                claim_explicit = True
        trainer = super().instantiate_trainer(**kwargs)
        if claim_explicit and trainer.logger is not None and trainer.logger.log_dir:
            if trainer.is_global_zero:
                claim(Path(trainer.logger.log_dir), self._run_fields())
        if self._get(self.config_init, "floor_stop", default=False):
            grad_floor = self._get(self.config_init, "diagnostics").grad_floor
            trainer.callbacks.append(FloorStopping(grad_floor))
        return trainer

    def _trainer_config(self) -> dict:
        return self._get(self.config_init, "trainer", default={}) or {}

    def _run_fields(self) -> dict[str, object]:
        """What the run is: the fields a run name may use."""
        return {
            "data": type(self.datamodule).__name__,
            "method": type(self.model).__name__,
            "backbone": type(self.model.backbone).__name__,
            "seed": self._get(self.config, "seed_everything"),
        }

    def _claim_named_run(self) -> Path:
        """Claims the run's folder ``<root>/lightning_logs/<run_name>`` (rank 0 only).

        The default name moves on to the next free ``-runN`` when taken; a name the user
        gave is refused when it holds a run. Other ranks of a multi-process run use the name
        unclaimed: their logs and files go through rank 0's folder (``trainer.log_dir``).

        Raises:
            RunFolderTaken: the user's run name holds a run.
        """
        root = Path(self._trainer_config().get("default_root_dir") or Path.cwd()) / LOGS
        template = self._get(self.config_init, "run_name", default=DEFAULT_RUN_NAME)
        folder = root / run_name(template, **self._run_fields())
        if rank_zero_only.rank != 0:
            return folder
        if template == DEFAULT_RUN_NAME:
            return claim_next(folder, self._run_fields())
        return claim(folder, self._run_fields())

    def _resumed_run_dir(self) -> Path | None:
        """The run folder of ``--ckpt_path`` when the checkpoint lies in a run's checkpoints/."""
        ckpt = self._get(self.config_init, "ckpt_path", default=None)
        if not ckpt or ckpt in ("last", "best", "hpc", "registry"):
            return None
        ckpt = Path(ckpt).resolve()
        run_dir = ckpt.parent.parent
        if ckpt.parent.name == "checkpoints" and holds_run(run_dir):
            return run_dir
        return None


def folder_logger(run_dir: Path) -> TensorBoardLogger:
    """A TensorBoard logger writing straight into ``run_dir``."""
    return TensorBoardLogger(save_dir=run_dir.parent, name="", version=run_dir.name)


def run(args: list[str] | None = None) -> FaevalCLI:
    """Runs the command line and returns the CLI (its trainer, model and datamodule).

    Args:
        args: replaces ``sys.argv[1:]`` (for tests and scripts).
    """
    # lightning 2.6 calls a torch 2.14 API that warns on every run; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    return FaevalCLI(
        CreditMethod,
        InMemoryDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=FaevalParser,
        trainer_class=FaevalTrainer,
        seed_everything_default=0,
        trainer_defaults={"max_epochs": 100},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """The ``faeval`` console script."""
    run(args)


if __name__ == "__main__":
    main()
