"""``faeval fit|validate|test|audit``: LightningCLI over the methods, the data sets and the
diagnostics callback.

faeval fit --model DFA --data CIFAR10
faeval fit --config configs/resmlp_d256_l4_dfa.yaml
faeval audit lightning_logs/CIFAR10/DFA/seed0   # or a .ckpt file: the protocol's verdict
faeval test lightning_logs/CIFAR10/DFA/seed0    # test accuracy, in the run's eval/ folder
"""

from __future__ import annotations

import inspect
import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import ClassVar

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.seed import max_seed_value as MAX_SEED
from lightning.fabric.utilities.seed import min_seed_value as MIN_SEED
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

import faeval.backbones  # short names: --model.backbone ResMLP
import faeval.data
import faeval.methods
from faeval.callbacks import Diagnostics, FloorStopping, LineProgress
from faeval.callbacks.summary import ModelSummary
from faeval.cli.folders import folder_logger, log_root
from faeval.cli.help import arrange_groups, hide_options, parser_kwargs, summarize_commands
from faeval.cli.messages import short_message
from faeval.cli.stacked import StackedFit, add_stack_arguments, check_lone_run, check_stack_resume
from faeval.data import InMemoryDataModule
from faeval.data.contract import input_shape_of, num_classes_of
from faeval.errors import (
    ConfigError,
    DataNotFoundError,
    FaevalError,
    UserCodeError,
    user_error,
)
from faeval.hparams import CLASS_PATH, class_config
from faeval.methods import CreditMethod
from faeval.protocol.audit import find_checkpoint, run_dir_of
from faeval.protocol.checkpoint import load_checkpoint
from faeval.quiet import BANNERS, quiet_lightning
from faeval.resume import ResumeConflict, check_resume_options, checkpointing
from faeval.runlog import RunLog
from faeval.runs import (
    DEFAULT_RUN_NAME,
    claim,
    claim_next,
    holds_run,
    release_unused,
    run_name,
    run_seed,
)
from faeval.trainer import FaevalTrainer


def run_arguments(path: str, given: list[str] | None = None) -> list[str]:
    """The arguments that rebuild a run for ``faeval audit|test|validate PATH`` (a run folder
    or a checkpoint).

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
        raise ConfigError(
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
        raise DataNotFoundError(
            f"no config.yaml in {run_dir} and {ckpt_file} does not record its data module; "
            "give it after the path: faeval audit PATH --data mypkg.MyData [--data.* options]"
        )
    seed = next((r.get("seed") for r in RunLog(run_dir).rows() if r.get("seed") is not None), None)
    if seed is not None:
        args += ["--seed_everything", str(seed)]
    return [*args, "--ckpt_path", str(ckpt_file)]


def check_seed(seed) -> None:
    """Refuses a ``--seed_everything`` that numpy cannot take (Lightning would raise late).

    Raises:
        ConfigError: an integer seed outside 0…2³²-1.
    """
    if isinstance(seed, int) and not isinstance(seed, bool):
        if not MIN_SEED <= seed <= MAX_SEED:
            raise ConfigError(
                f"--seed_everything {seed}: a seed is an integer from {MIN_SEED} to {MAX_SEED} "
                "(or true for a random one)"
            )


#: What Lightning takes as ``--ckpt_path`` besides a file: checkpoints it finds itself.
CKPT_NAMES = ("last", "best", "hpc", "registry")


def check_ckpt_path(ckpt_path, subcommand: str) -> None:
    """Refuses a ``--ckpt_path`` that is not a file (Lightning's error is a traceback).

    Raises:
        DataNotFoundError: nothing there, or a folder, with the checkpoint to give instead.
    """
    if not ckpt_path or Path(ckpt_path).is_file():
        return
    text = str(ckpt_path)
    if text in CKPT_NAMES or text.startswith("registry:") or "://" in text:
        return
    last = Path(ckpt_path) / "checkpoints" / "last.ckpt"
    if last.is_file():
        raise DataNotFoundError(f"--ckpt_path {text} is a run folder; give its checkpoint: {last}")
    what = "is a folder, not a checkpoint" if Path(ckpt_path).is_dir() else "names no file"
    way_out = "RUN/checkpoints/last.ckpt"
    if subcommand != "fit":
        way_out += f", or the run's folder: faeval {subcommand} RUN_FOLDER"
    raise DataNotFoundError(f"--ckpt_path {text} {what}; give a run's {way_out}")


#: Packages whose classes are faeval's or its libraries': an error raised in them is not the
#: user's own code.
NOT_USER_CODE = ("faeval", "torch", "torchvision", "lightning", "jsonargparse")


def user_code_error(err: BaseException, config) -> UserCodeError | None:
    """The error a user's own class raised while being built (``--model mypkg.MyMethod``
    whose ``__init__`` raises), as one line naming the class and the user's message and a
    second with the line of their code; None when no user's code raised it.

    Args:
        err: what escaped the classes' instantiation (jsonargparse wraps the user's error).
        config: the parsed configuration: its class paths say which packages are the user's.
    """
    packages = {path.split(".")[0] for path in _class_paths(config.as_dict())}
    packages -= set(NOT_USER_CODE)
    seen: set[int] = set()
    while err is not None and id(err) not in seen and packages:
        seen.add(id(err))
        frames = [
            (frame, lineno)
            for frame, lineno in traceback.walk_tb(err.__traceback__)
            if str(frame.f_globals.get("__name__", "")).split(".")[0] in packages
        ]
        if frames:
            owner = next((f.f_locals["self"] for f, _ in frames if "self" in f.f_locals), None)
            cls = f"{type(owner).__module__}.{type(owner).__qualname__}" if owner else None
            message = (str(err).strip().splitlines() or [""])[0]
            frame, lineno = frames[-1]  # the user's line nearest to the error
            return UserCodeError(
                f"{cls or frame.f_globals['__name__']} raised {type(err).__name__}"
                + (f": {message}" if message else "")
                + f"\n  at {frame.f_code.co_filename}:{lineno}, in {frame.f_code.co_name}"
            )
        err = err.__cause__ or err.__context__
    return None


def _class_paths(tree) -> list[str]:
    """Every ``class_path`` value in a configuration (nested dicts and lists)."""
    if isinstance(tree, dict):
        own = [tree["class_path"]] if isinstance(tree.get("class_path"), str) else []
        return own + [p for v in tree.values() for p in _class_paths(v)]
    if isinstance(tree, list):
        return [p for v in tree for p in _class_paths(v)]
    return []


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
    """Short names the command line accepts for --model, --data, --model.backbone and
    --model.optimizer."""
    optimizers = known_classes("model.optimizer").items()
    return {
        "model": _subclasses(faeval.methods, CreditMethod),
        "data": _subclasses(faeval.data, InMemoryDataModule),
        "model.backbone": _subclasses(faeval.backbones, faeval.backbones.LayeredBackbone),
        "model.optimizer": sorted(
            n for n, c in optimizers if issubclass(c, torch.optim.Optimizer) and n != "Optimizer"
        ),
    }


def known_classes(key: str) -> dict[str, type]:
    """Short name -> class for a class key (``model``, ``data``, ``model.backbone``…)."""
    module = {
        "model": faeval.methods,
        "data": faeval.data,
        "model.backbone": faeval.backbones,
        "model.optimizer": torch.optim,
    }.get(key)
    if module is None:
        return {}
    return {n: c for n in dir(module) if isinstance(c := getattr(module, n), type)}


#: Options only ``faeval fit`` acts on (the others accept them: a run's config.yaml has them).
FIT_ONLY = ("floor_stop", "run_name", "checkpoint_every_n_steps", "seeds", "stack")


class FaevalParser(LightningArgumentParser):
    """Reports a mistake on the command line in one or two lines, with exit code 2.

    The bad value, what is accepted (with a "did you mean") and the way out; no usage dump
    (``--help`` has it).
    """

    #: The command line being parsed (set by ``FaevalCLI.parse_arguments``).
    argv: ClassVar[list[str]] = []

    @override
    def format_help(self) -> str:
        arrange_groups(self)
        return super().format_help()

    @override
    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse trying alternatives internally
            super().error(message, ex)
        # The command's options: a --config file's keys are checked by the top parser.
        parser = self
        if self._subcommands_action is not None and self.argv:
            parser = self._subcommands_action._name_parser_map.get(self.argv[0], self)
        text = short_message(
            message,
            self.argv,
            known_names(),
            known_classes,
            [s for s in parser._option_string_actions if s.startswith("--")],
            FaevalCLI.subcommands(),
        )
        sys.stderr.write(f"faeval: error: {text}\n")
        self.exit(2)


class FaevalCLI(LightningCLI):
    """LightningCLI with the diagnostics always on and a one-switch floor stop."""

    #: The run folders this process claimed (a lone run's; a stack's and each of its seeds'):
    #: ``main`` releases them if the run fails before writing anything.
    claimed: ClassVar[list[Path]] = []

    @override
    def setup_parser(self, add_subcommands, main_kwargs, subparser_kwargs) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        summarize_commands(self.parser)

    _raw_args: list[str] | None = None  # the arguments as given (parse_arguments)
    _building: str | None = None  # the command whose parser is being built

    @override
    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        # add_arguments_to_parser is shared by every command: it reads which one from here.
        self._building = subcommand
        try:
            return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        finally:
            self._building = None

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # As add_lightning_class_args(Diagnostics, "diagnostics"), less the Python-only
        # probe=(x, y) argument (tensors have no command-line form).
        parser.callback_keys.append("diagnostics")
        parser.add_class_arguments(
            Diagnostics, "diagnostics", fail_untyped=False, sub_configs=True, skip={"probe"}
        )
        # faeval fit's own options (FIT_ONLY).
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
        # Resumable runs (faeval/resume.py): checkpoints/last.ckpt at every epoch end and,
        # with this option, every N steps too.
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int,
            default=0,
            help="Also save checkpoints/last.ckpt every N training steps (0: every epoch only).",
        )
        add_stack_arguments(parser)  # --seeds, --stack.*: seeds stacked in one process (issue 13)
        if self._building != "fit":
            # A run's config.yaml (which test, validate and audit read) holds fit's options:
            # they are accepted there, and left out of the command's --help.
            hide_options(parser, FIT_ONLY)
        # The model is built for the data: any LightningDataModule (--data mypkg.MyData) gives
        # its input shape and class count, or faeval reads them off its validation data.
        parser.link_arguments(
            "data", "model.init_args.input_shape", input_shape_of, apply_on="instantiate"
        )
        parser.link_arguments(
            "data", "model.init_args.num_classes", num_classes_of, apply_on="instantiate"
        )

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        # predict is Lightning's, not faeval's: methods return logits, nothing to write.
        lightning = {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}
        return {**lightning, "audit": {"model", "datamodule"}}

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        raw = sys.argv[1:] if args is None else args
        FaevalParser.argv = [str(a) for a in raw] if isinstance(raw, list) else []
        if isinstance(raw, list) and raw in (["audit"], ["test"], ["validate"]):
            raise ConfigError(
                f"faeval {raw[0]} needs a trained run: faeval {raw[0]} RUN_FOLDER (or a "
                f"checkpoint); faeval {raw[0]} --help for its options"
            )
        if (
            isinstance(raw, list)
            and raw[:1] in (["audit"], ["test"], ["validate"])
            and len(raw) > 1
            and not str(raw[1]).startswith("-")
        ):  # faeval audit|test|validate RUN_OR_CKPT: the run's own config and checkpoint
            args = run_arguments(raw[1], raw[2:])
            self.config = parser.parse_args([raw[0], *args, *raw[2:]])
            return
        self._raw_args = raw  # what was given, for the resume check in _parse_ckpt_path
        super().parse_arguments(parser, args)

    @override
    def _parse_ckpt_path(self) -> None:
        # Lightning's first step after parsing: the options are checked before anything uses
        # them (Lightning's own checks are tracebacks, or come after folders are claimed).
        self._check_options()
        # audit loads its checkpoint itself (weights-only, with clear errors); the model comes
        # from the run's config.yaml, and the checkpoint's class is checked against it.
        if self.config.get("subcommand") != "audit":
            self._check_resume_options()  # before Lightning merges the checkpoint's options
            super()._parse_ckpt_path()

    def _check_options(self) -> None:
        """Refuses option values that would end in a traceback, or a silent surprise, later.

        Raises:
            ConfigError: a seed out of numpy's range, a negative checkpoint interval.
            DataNotFoundError: ``--ckpt_path`` names no file.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        options = self.config[subcommand]
        check_seed(options.get("seed_everything"))
        every = options.get("checkpoint_every_n_steps")
        if isinstance(every, int) and every < 0:
            raise ConfigError(
                f"--checkpoint_every_n_steps {every}: give a number of training steps, or 0 to "
                "save checkpoints/last.ckpt at every epoch end only"
            )
        check_ckpt_path(options.get("ckpt_path"), subcommand)

    def _check_resume_options(self) -> None:
        """Refuses model options given with ``--ckpt_path`` that contradict the checkpoint's
        (Lightning would silently replace them by the checkpoint's hyperparameters).

        Raises:
            ResumeConflict: naming each contradicting option and the checkpoint's value, or
                another seed than the run's.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file() and isinstance(self._raw_args, list):
            given = self.parser.parse_args(self._raw_args, defaults=False)[subcommand]
            if subcommand == "fit" and self.config[subcommand].get("seeds") is not None:
                check_stack_resume(given.get("model"), ckpt_path)  # a stack's (issue 13)
            else:
                check_resume_options(given.get("model"), ckpt_path)
                if subcommand == "fit":
                    self._resume_seed(given.get("seed_everything"), ckpt_path)

    def _resume_seed(self, given, ckpt_path: str) -> None:
        """A resumed run keeps the seed its folder recorded when it began: ``--seed_everything``
        left out takes it (not the default 0), another one is refused.

        Raises:
            ResumeConflict: ``--seed_everything`` given, and not the run's.
        """
        ckpt = Path(ckpt_path).resolve()
        saved = run_seed(ckpt.parent.parent) if ckpt.parent.name == "checkpoints" else None
        if saved is None or given == saved:
            return
        if given is None:
            self.config[self.config.subcommand].seed_everything = saved
            return
        raise ResumeConflict(
            f"--seed_everything {given}: --ckpt_path {ckpt_path} continues a run of seed {saved}. "
            "Resume with the run's own options (faeval fit --config RUN/config.yaml --ckpt_path "
            "CKPT) or leave --seed_everything out"
        )

    @override
    def instantiate_classes(self) -> None:
        try:
            self._instantiate_classes()
        except Exception as err:  # a user's class raising in __init__: one line, theirs
            if user_error(err) is None and (mistake := user_code_error(err, self.config)):
                raise mistake from err
            raise

    def _instantiate_classes(self) -> None:
        # `faeval fit --seeds 0-9` (issue 13): faeval.cli.stacked builds one method and data
        # module per seed, the stack, its trainer and the seeds' run folders in place of the
        # usual ones.
        if self.subcommand == "fit" and self.option("seeds") is not None:
            stack = StackedFit(self).build()
            self.config_init, self.model = stack.config_init, stack.model
            self.datamodule, self.trainer = stack.datamodule, stack.trainer
            return
        check_lone_run(self.subcommand, self.option("seeds"), self.option("stack"))
        super().instantiate_classes()

    @override
    def instantiate_trainer(self, **kwargs):
        trainer_config = self.trainer_config()
        default_logger = trainer_config.get("logger") in (None, True)
        if self.subcommand == "fit":  # last.ckpt, written atomically (faeval/resume.py)
            kwargs.update(self.checkpointing(trainer_config))
        claim_explicit, config_filename = False, None
        if self.subcommand == "fit":
            run_dir = self._resumed_run_dir()
            if run_dir is not None:  # --ckpt_path continues the run in its own folder
                if default_logger:
                    kwargs["logger"] = folder_logger(run_dir)
                config_filename = "config.resumed.yaml"
            elif default_logger:
                kwargs["logger"] = folder_logger(self.claim_run(self.run_fields()))
            else:  # a logger the user configured: its folder must be a new one
                claim_explicit = True
        elif self.subcommand in ("test", "validate"):
            # An evaluation never writes into the run it evaluates: it gets a folder of its own.
            if default_logger:
                kwargs["logger"] = folder_logger(self._claim_eval_dir())
            kwargs["enable_checkpointing"] = False  # nothing to save, nothing to move
            # An evaluation restores the weights; the training callbacks' states do not matter.
            warnings.filterwarnings(
                "ignore", message="Be aware that when using `ckpt_path`, callbacks used to create"
            )
        elif self.subcommand == "audit":
            kwargs["logger"] = False  # the audit writes its own files beside the checkpoint
        kwargs["callbacks"] = self.progress_callbacks(
            kwargs.get("callbacks", trainer_config.get("callbacks")), trainer_config
        )
        extra = [self._get(self.config_init, c) for c in self.subcommand_parser().callback_keys]
        trainer = self.build_trainer({**trainer_config, **kwargs}, extra, config_filename)
        if claim_explicit and trainer.logger is not None and trainer.logger.log_dir:
            if trainer.is_global_zero:
                self.claim(Path(trainer.logger.log_dir), self.run_fields())
        if self.option("floor_stop", False):
            grad_floor = self._get(self.config_init, "diagnostics").grad_floor
            trainer.callbacks.append(FloorStopping(grad_floor))
        return trainer

    # The interface of a command's run, used by the lone run here and by the stack of seeds
    # (faeval.cli.stacked): how runs are claimed and trainers built is said once, here.

    def option(self, key: str, default=None):
        """The parsed value of one of this command's options (``seeds``, ``run_name`` …)."""
        return self._get(self.config, key, default=default)

    def subcommand_parser(self) -> LightningArgumentParser:
        """The parser of the command being run (``fit``, ``test`` …)."""
        return self._parser(self.subcommand)

    def trainer_config(self) -> dict:
        """The trainer's arguments as instantiated (callbacks and loggers built)."""
        return {**(self._get(self.config_init, "trainer", default={}) or {})}

    def checkpointing(self, trainer_config: dict) -> dict[str, list]:
        """The trainer arguments that keep ``last.ckpt`` (``faeval.resume.checkpointing``,
        every ``--checkpoint_every_n_steps`` too)."""
        return checkpointing(trainer_config, self.option("checkpoint_every_n_steps", 0) or 0)

    @staticmethod
    def progress_callbacks(callbacks, trainer_config: dict) -> list:
        """``callbacks`` and, when stdout is not a terminal and the progress bar is on,
        ``LineProgress``: a log file gets a few lines per epoch, not a bar redrawn per batch."""
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        callbacks = [c for c in callbacks if c is not None]
        if not sys.stdout.isatty() and trainer_config.get("enable_progress_bar") is not False:
            callbacks.append(LineProgress())
        if trainer_config.get("enable_model_summary") is not False and not any(
            isinstance(c, LightningModelSummary) for c in callbacks
        ):
            callbacks.append(ModelSummary())  # Lightning's, without a FLOPs column of zeros
        return callbacks

    def build_trainer(
        self, config: dict, extra_callbacks=(), config_filename: str | None = None
    ) -> FaevalTrainer:
        """The trainer from its arguments; a bad ``--trainer.*`` value is a ``ConfigError``.

        Args:
            config: the trainer's arguments.
            extra_callbacks: callbacks besides ``config``'s (the diagnostics).
            config_filename: the name the run's config is saved under (``config.yaml``).

        Raises:
            ConfigError: Lightning refused a trainer argument.
        """
        if config_filename is not None:
            self.save_config_kwargs["config_filename"] = config_filename
        try:
            return self._instantiate_trainer(config, list(extra_callbacks))
        except (ValueError, MisconfigurationException) as err:
            raise ConfigError(f"--trainer: {err}") from err

    def run_fields(self, model=None, datamodule=None, seed=None) -> dict[str, object]:
        """What a run is: the fields a run name may use (this CLI's model, data and seed unless
        given)."""
        model = self.model if model is None else model
        datamodule = self.datamodule if datamodule is None else datamodule
        return {
            "data": type(datamodule).__name__,
            "method": type(model).__name__,
            "backbone": type(model.backbone).__name__,
            "seed": self.option("seed_everything") if seed is None else seed,
        }

    def claim(self, folder: Path, info: dict | None = None, *, next_free: bool = False) -> Path:
        """Claims a run folder (``faeval.runs``) and remembers it: ``main`` gives it back if
        the run fails before writing anything.

        Args:
            folder: the folder to claim.
            info: what the claim file records besides who claimed it.
            next_free: when ``folder`` is taken, claim the next free ``-runN`` beside it.

        Raises:
            RunFolderTaken: ``folder`` holds a run (and ``next_free`` is off).
        """
        folder = (claim_next if next_free else claim)(folder, info)
        FaevalCLI.claimed.append(folder)
        return folder

    def claim_run(self, fields: dict[str, object]) -> Path:
        """Claims the run's folder ``<root>/lightning_logs/<run_name>`` (rank 0 only).

        The default name moves on to the next free ``-runN`` when taken; a name the user
        gave is refused when it holds a run. Other ranks of a multi-process run use the name
        unclaimed: their logs and files go through rank 0's folder (``trainer.log_dir``).

        Args:
            fields: what the run is (``run_fields``).

        Raises:
            RunFolderTaken: the user's run name holds a run.
        """
        root = log_root(self._get(self.config, "trainer", default={}).get("default_root_dir"))
        template = self.option("run_name", DEFAULT_RUN_NAME)
        folder = root / run_name(template, **fields)
        if rank_zero_only.rank != 0:
            return folder
        return self.claim(folder, fields, next_free=template == DEFAULT_RUN_NAME)

    def _claim_eval_dir(self) -> Path:
        """Claims ``RUN/eval/<command>-<checkpoint>`` for ``faeval test|validate`` (rank 0).

        Raises:
            ConfigError: no checkpoint given: there is no trained run to evaluate.
        """
        ckpt = self._get(self.config_init, "ckpt_path", default=None)
        if not ckpt:
            raise ConfigError(
                f"faeval {self.subcommand} evaluates a trained run: faeval {self.subcommand} "
                "RUN_FOLDER, or --ckpt_path CHECKPOINT with the run's --config"
            )
        ckpt = Path(ckpt).resolve()
        run_dir = self._resumed_run_dir()
        base = (run_dir or ckpt.parent) / "eval" / f"{self.subcommand}-{ckpt.stem}"
        if rank_zero_only.rank != 0:
            return base
        return self.claim(base, {**self.run_fields(), "checkpoint": str(ckpt)}, next_free=True)

    def after_test(self) -> None:
        self._write_results()

    def after_validate(self) -> None:
        self._write_results()

    def _write_results(self) -> None:
        """``results.json`` in the evaluation's folder: the figures and what was evaluated."""
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero or log_dir is None:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        record = {
            "command": self.subcommand,
            "checkpoint": str(self._get(self.config_init, "ckpt_path", default=None)),
            "metrics": metrics,
        }
        path = Path(log_dir) / "results.json"
        path.write_text(json.dumps(record, indent=1))
        figures = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        print(f"[faeval] {self.subcommand}: {figures}; written to {path}", flush=True)

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


class _Parsed(Exception):
    """Raised by ``ParseOnly`` once the command line parsed: nothing is built."""


class ParseOnly(FaevalCLI):
    """Parses and checks a command line as ``faeval`` would, then stops: no class is built, no
    folder claimed, nothing trained (``check_arguments``)."""

    @override
    def instantiate_classes(self) -> None:
        raise _Parsed


def check_arguments(args: list[str]) -> None:
    """Checks ``faeval ARGS`` (``["fit", "--model", "DFA", ...]``) as the command parses it:
    option names, types, class paths and required options, nothing built or run.

    Raises:
        SystemExit: code 2, the one-line error printed on stderr, for a mistake.
    """
    try:
        run(args, cli_class=ParseOnly)
    except _Parsed:
        return
    except FaevalError as err:
        sys.stderr.write(f"faeval: error: {err}\n")
        raise SystemExit(2) from None


def run(args: list[str] | None = None, cli_class: type[FaevalCLI] = FaevalCLI) -> FaevalCLI:
    """Runs the command line and returns the CLI (its trainer, model and datamodule).

    Args:
        args: replaces ``sys.argv[1:]`` (for tests and scripts).
        cli_class: the CLI class (``ParseOnly`` to check a command line only).
    """
    quiet_lightning(BANNERS)
    return cli_class(
        CreditMethod,
        LightningDataModule,  # faeval's data sets by name, anyone's by class path
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_class=FaevalParser,
        parser_kwargs=parser_kwargs(),
        trainer_class=FaevalTrainer,
        seed_everything_default=0,
        # faeval writes its own HParams row (method, data, seed, options) without hp_metric.
        trainer_defaults={"max_epochs": 100, "enable_autolog_hparams": False},
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """``faeval fit|validate|test|audit``: a user's mistake is one line and exit code 2.

    A ``FaevalError`` (a bad value, a missing data set or file, an unreadable checkpoint, a
    taken run folder) and Lightning's own configuration errors are printed without a
    traceback; any other exception is a bug in faeval and keeps its traceback.
    """
    FaevalCLI.claimed = []
    try:
        run(args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:
        for folder in dict.fromkeys(FaevalCLI.claimed):
            release_unused(folder)  # a run that failed before writing anything
        mistake = user_error(err) or _lightning_misconfiguration(err)
        if mistake is None:
            raise
        sys.stderr.write(f"faeval: error: {mistake}\n")
        raise SystemExit(2) from None


def _lightning_misconfiguration(err: BaseException) -> BaseException | None:
    """Lightning's MisconfigurationException behind ``err`` (a bad Trainer option), if any."""
    while err is not None:
        if isinstance(err, MisconfigurationException):
            return err
        err = err.__cause__ or err.__context__
    return None
