"""``faeval``: LightningCLI over the methods, the data sets and the diagnostics callback.

faeval fit --model DFA --data CIFAR10
faeval fit --config configs/resmlp_d256_l4_dfa.yaml
faeval audit lightning_logs/version_0          # or a .ckpt file: the protocol's verdict
"""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

import faeval.backbones  # short names: --model.backbone ResMLP
import faeval.data
import faeval.methods
from faeval.callbacks import Diagnostics, FloorStopping
from faeval.data import InMemoryDataModule
from faeval.data.contract import DataContractError, input_shape_of, num_classes_of
from faeval.hparams import CLASS_PATH, class_config
from faeval.methods import CreditMethod
from faeval.protocol.audit import find_checkpoint, run_dir_of
from faeval.protocol.checkpoint import load_checkpoint
from faeval.runlog import RunLog
from faeval.trainer import FaevalTrainer


def audit_arguments(path: str, given: list[str] | None = None) -> list[str]:
    """The arguments that rebuild a run for ``faeval audit PATH`` (a run dir or a checkpoint).

    A run of ``faeval fit`` left its ``config.yaml``. A run trained from Python left none:
    its checkpoint records the method, and faeval's data modules record themselves
    (``faeval.hparams``); another data module is given as ``--data`` after PATH.

    Args:
        path: the run directory or checkpoint.
        given: the options that follow PATH on the command line.

    Raises:
        FileNotFoundError: no checkpoint there, or a run without config.yaml whose data is
            neither recorded nor given.
        ValueError: the file is not a readable faeval checkpoint, or its network was passed
            to the method built (it is not recorded as a class).
    """
    ckpt_file = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_file)  # a clear error for a corrupt or foreign file
    run_dir = run_dir_of(ckpt_file)
    config = run_dir / "config.yaml"
    if config.is_file():
        return ["--config", str(config), "--ckpt_path", str(ckpt_file)]
    model = ckpt["hyper_parameters"]
    if "backbone" not in model:
        raise ValueError(
            f"{ckpt_file} holds a method whose network was passed in built (a Wrapped model); "
            "audit it from Python with faeval.protocol.audit_model, or make the network a "
            "class (docs/extending.md) so that its checkpoint records how to build it"
        )
    # The input shape and class count come from the data, as in `faeval fit`.
    args = ["--model", json.dumps(class_config(model, skip={"input_shape", "num_classes"}))]
    data = ckpt.get("datamodule_hyper_parameters") or {}
    if CLASS_PATH in data:
        args += ["--data", json.dumps(class_config(data))]
    elif not any(str(a).startswith("--data") for a in given or []):
        raise FileNotFoundError(
            f"no config.yaml in {run_dir} and {ckpt_file} does not record its data module; "
            "give it after the path: faeval audit PATH --data mypkg.MyData [--data.* options]"
        )
    seed = next((r.get("seed") for r in RunLog(run_dir).rows() if r.get("seed") is not None), None)
    if seed is not None:
        args += ["--seed_everything", str(seed)]
    return [*args, "--ckpt_path", str(ckpt_file)]


def _subclasses(module, base: type) -> list[str]:
    return sorted(
        name
        for name in module.__all__
        if isinstance(cls := getattr(module, name), type)
        and issubclass(cls, base)
        and not inspect.isabstract(cls)
        and cls is not faeval.backbones.Wrapped  # built from Python or subclassed, not by name
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
        # As add_lightning_class_args(Diagnostics, "diagnostics"), less the Python-only
        # probe=(x, y) argument (tensors have no command-line form).
        parser.callback_keys.append("diagnostics")
        parser.add_class_arguments(
            Diagnostics, "diagnostics", fail_untyped=False, sub_configs=True, skip={"probe"}
        )
        parser.add_argument(
            "--floor_stop",
            type=bool,
            default=False,
            help="Stop the run once ‖g_L‖ < diagnostics.grad_floor (diagnostic (b)).",
        )
        # The model is built for the data: any LightningDataModule (--data mypkg.MyData) gives
        # its input shape and class count, or faeval reads them off its validation data.
        parser.link_arguments(
            "data", "model.init_args.input_shape", input_shape_of, apply_on="instantiate"
        )
        parser.link_arguments(
            "data", "model.init_args.num_classes", num_classes_of, apply_on="instantiate"
        )

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # jsonargparse wraps what a link's compute_fn raised
            if isinstance(err.__cause__, DataContractError):
                raise err.__cause__ from None
            raise

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
            args = audit_arguments(raw[1], raw[2:])
            self.config = parser.parse_args(["audit", *args, *raw[2:]])
            return
        super().parse_arguments(parser, args)

    @override
    def _parse_ckpt_path(self) -> None:
        # audit loads its checkpoint itself (weights-only, with clear errors); the model comes
        # from the run's config.yaml, and the checkpoint's class is checked against it.
        if self.config.get("subcommand") != "audit":
            super()._parse_ckpt_path()

    @override
    def instantiate_trainer(self, **kwargs):
        run_dir = self._resumed_run_dir()
        if run_dir is not None:  # continue the run's own logs instead of starting version_N+1
            kwargs["logger"] = TensorBoardLogger(
                save_dir=run_dir.parent.parent, name=run_dir.parent.name, version=run_dir.name
            )
            self.save_config_kwargs["config_filename"] = "config.resumed.yaml"
        trainer = super().instantiate_trainer(**kwargs)
        if self._get(self.config_init, "floor_stop", default=False):
            grad_floor = self._get(self.config_init, "diagnostics").grad_floor
            trainer.callbacks.append(FloorStopping(grad_floor))
        return trainer

    def _resumed_run_dir(self) -> Path | None:
        """The run directory of ``--ckpt_path`` when it is a default-logger faeval run."""
        ckpt = self._get(self.config_init, "ckpt_path", default=None)
        logger = self._get(self.config_init, "trainer", default={}).get("logger")
        if not ckpt or logger not in (None, True) or ckpt in ("last", "best", "hpc"):
            return None
        run_dir = Path(ckpt).resolve().parent.parent
        if run_dir.name.startswith("version_") and (run_dir / "config.yaml").is_file():
            return run_dir
        return None


def run(args: list[str] | None = None) -> FaevalCLI:
    """Runs the command line and returns the CLI (its trainer, model and datamodule).

    Args:
        args: replaces ``sys.argv[1:]`` (for tests and scripts).
    """
    # lightning 2.6 calls a torch 2.14 API that warns on every run; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    return FaevalCLI(
        CreditMethod,
        LightningDataModule,  # faeval's data sets by name, anyone's by class path
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
    try:
        run(args)
    except DataContractError as err:  # a user's data module that lacks what faeval needs
        print(f"faeval: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
