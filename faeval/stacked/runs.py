"""Every seed of a stack as an ordinary run: its folder, rows, TensorBoard run and checkpoints.

After each epoch the stacked state is read back into K single-seed methods built as the lone
runs build them (``seed_state``), and each seed's own ``Diagnostics`` and ``Protocol``
callbacks run on its method as they run in a lone run, through ``SeedView``: a view of the
trainer that shows that seed's folder, logger, data and epoch figures. Each stacked checkpoint
is written again per seed, as the checkpoint its lone run would have written (its weights,
its slice of the optimizer state and of the epoch's running sums, the loops with the batch
position, its callbacks' state), through the trainer's checkpoint IO (``AtomicCheckpointIO``
under ``faeval fit``: never torn), so ``faeval audit``, ``faeval test``, a resumed lone run
(mid-epoch too) and the report read K ordinary runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tqdm import tqdm
from typing_extensions import override

from faeval.callbacks import Diagnostics, LastCheckpoint, Protocol
from faeval.data import InMemoryDataModule
from faeval.methods import CreditMethod
from faeval.stacked.convert import seed_state
from faeval.stacked.module import HPARAMS_KEY

PREFIX = "method."  # the stacked method's keys in a SeedStack's state dict
#: What a stack's checkpoint holds that no lone run's does (the seeds' recorded options).
STACK_KEYS = (HPARAMS_KEY,)


@contextlib.contextmanager
def run_seed(seed: int) -> Iterator[None]:
    """Inside, the run's seed (``resolve_seed(None)``) is ``seed``, as in the seed's lone run."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


@dataclass
class SeedRun:
    """One seed of a stack and what its lone run would hold.

    Attributes:
        seed: the run's seed.
        index: its place in the stack.
        run_dir: its run folder.
        method: the single-seed method the stacked state is read back into.
        datamodule: its data module (its probe, its seed).
        diagnostics: its own ``Diagnostics`` callback.
        protocols: its own ``Protocol`` callbacks, if any.
        logger: its TensorBoard run, or None.
        stopped: the epoch at which its floor stop ended it, or None while it trains.
        checkpoint: its last checkpoint file.
        resumed_from: the checkpoint the run was resumed from, which stays (as Lightning keeps
            the checkpoint a lone run resumed from).
    """

    seed: int
    index: int
    run_dir: Path
    method: CreditMethod
    datamodule: InMemoryDataModule
    diagnostics: Diagnostics
    protocols: list[Protocol] = field(default_factory=list)
    logger: TensorBoardLogger | None = None
    stopped: int | None = None
    checkpoint: Path | None = None
    resumed_from: Path | None = None
    logged: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method.log = self.collect  # what the seed's callbacks log goes to its logger

    def collect(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Stands in for ``LightningModule.log`` on the seed's method: keeps the figure."""
        self.logged[name] = float(value)

    def callbacks(self) -> list[Callback]:
        return [self.diagnostics, *self.protocols]


class SeedView:
    """What one seed's callbacks see of the stack's trainer: that seed's folder, logger and data.

    Anything else a callback asks for is an error naming it, never the stack's own value.
    """

    def __init__(self, trainer: Trainer, run: SeedRun, metrics: dict[str, float]) -> None:
        self._trainer = trainer
        self.logger = run.logger
        self.loggers = [run.logger] if run.logger else []
        self.log_dir = self.default_root_dir = str(run.run_dir)
        self.datamodule = run.datamodule
        self.callbacks = run.callbacks()
        self.callback_metrics = {k: torch.tensor(v) for k, v in metrics.items()}
        self.is_global_zero = trainer.is_global_zero
        self.global_rank, self.world_size = trainer.global_rank, trainer.world_size
        self.strategy = trainer.strategy  # one device: its broadcasts hand the value back

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch

    @property
    def global_step(self) -> int:
        return self._trainer.global_step

    @property
    def max_epochs(self) -> int | None:
        return self._trainer.max_epochs

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"a seed's callback asked the stacked run's trainer for {name!r}, which "
            "faeval.stacked.SeedView does not give per seed; add it there"
        )


class SeedRuns(Callback):
    """Writes every seed of a ``SeedStack`` as an ordinary run (see the module docstring).

    Args:
        runs: the seeds' runs, in the stack's order.
        floor_stop: end a seed's run once its ‖g_L‖ falls below ``grad_floor`` (or is not
            finite), as ``--floor_stop`` ends a lone run; the stack goes on for the others
            (the stopped seed keeps training in the stack, unseen: the others are unaffected).
        grad_floor: the floor of diagnostic (b).
    """

    def __init__(self, runs: list[SeedRun], floor_stop: bool = False, grad_floor: float = 1e-7):
        self.runs = runs
        self.floor_stop = floor_stop
        self.grad_floor = grad_floor

    def active(self) -> list[SeedRun]:
        return [r for r in self.runs if r.stopped is None]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "diagnostics": [r.diagnostics.state_dict() for r in self.runs],
            "protocols": [[p.state_dict() for p in r.protocols] for r in self.runs],
            "stopped": [r.stopped for r in self.runs],
            "checkpoints": [None if r.checkpoint is None else str(r.checkpoint) for r in self.runs],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        protocols = state_dict.get("protocols") or [[] for _ in self.runs]
        for run, diag, protos, stopped, ckpt in zip(
            self.runs,
            state_dict["diagnostics"],
            protocols,
            state_dict["stopped"],
            state_dict["checkpoints"],
            strict=True,
        ):
            run.diagnostics.load_state_dict(diag)
            for protocol, state in zip(run.protocols, protos, strict=False):
                protocol.load_state_dict(state)  # its rows after the checkpoint go at fit start
            run.stopped = stopped
            run.checkpoint = run.resumed_from = None if ckpt is None else Path(ckpt)

    def sync(self, stack: LightningModule) -> None:
        """Reads each seed's state out of the stack into its single-seed method."""
        state = stack.method.state_dict()
        for run in self.runs:
            run.method.load_state_dict(seed_state(state, run.index))

    def view(self, trainer: Trainer, stack: LightningModule, run: SeedRun) -> SeedView:
        metrics = stack.epoch_means(run.index)
        for name, values in stack.test_figures.items():
            metrics[name] = values[run.index]
        return SeedView(trainer, run, metrics)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for run in self.runs:  # each reads its run folder here, once (as in a lone run)
            for callback in run.callbacks():
                callback.setup(SeedView(trainer, run, {}), run.method, stage)

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sync(pl_module)
        for run in self.runs:
            run.method.to(pl_module.device)
            if run.logger is not None:
                run.logger.log_hyperparams(dict(run.method.hparams))
            if run.stopped is None:
                with run_seed(run.seed):
                    for callback in run.callbacks():
                        callback.on_fit_start(SeedView(trainer, run, {}), run.method)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The diagnostics take the probe and write the epoch-0 row here (a resumed run drops
        # the rows written after its checkpoint), as in a lone run.
        for run in self.active():
            with run_seed(run.seed):
                for callback in run.callbacks():
                    callback.on_train_start(SeedView(trainer, run, {}), run.method)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for run in self.active():
            for callback in run.callbacks():
                callback.on_train_epoch_start(SeedView(trainer, run, {}), run.method)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sync(pl_module)
        for run in self.active():
            view = self.view(trainer, pl_module, run)
            run.logged = {}
            if run.diagnostics.verbose and trainer.is_global_zero:
                tqdm.write(f"[faeval] seed {run.seed} of the stack ({run.run_dir})")
            with run_seed(run.seed):
                for callback in run.callbacks():
                    callback.on_train_epoch_end(view, run.method)
            if run.logger is not None:  # the method's figures, at x = epoch as a lone run's
                metrics = {k: float(v) for k, v in view.callback_metrics.items()}
                run.logger.log_metrics(metrics, step=trainer.current_epoch + 1)
            g_last = run.logged.get("diag/g_L")
            if run.diagnostics.diverged:  # its lone run would stop here too
                self.stop(trainer, pl_module, run)
            elif self.floor_stop and g_last is not None and not g_last >= self.grad_floor:
                self.stop(trainer, pl_module, run, g_last)
        if not self.active():
            trainer.should_stop = True

    def stop(
        self, trainer: Trainer, stack: LightningModule, run: SeedRun, g_last: float | None = None
    ) -> None:
        """Ends one seed's run where its lone run would have ended: ``FloorStopping`` on
        ``g_last``, or (without it) the divergence its diagnostics saw."""
        run.stopped = trainer.current_epoch + 1
        if g_last is not None:
            what = (
                "is not finite"
                if not math.isfinite(g_last)
                else f"{g_last:.3g} < {self.grad_floor}"
            )
            tqdm.write(
                f"[faeval] seed {run.seed}: stopped after epoch {run.stopped}: ‖g_L‖ {what}. "
                "Diagnostic (b): the true gradient at the last hidden layer is at the floor, so "
                "cosines against it are unmeasurable from here on."
            )
            run.diagnostics.stop_reason = (
                f"‖g_L‖ {what}: under the floor (diagnostic (b)) after epoch {run.stopped}"
            )
        self.finish(trainer, stack, run)

    def finish(self, trainer: Trainer, stack: LightningModule, run: SeedRun) -> None:
        """What the end of a lone run does: the protocol's last pass, the closing line."""
        view = self.view(trainer, stack, run)
        with run_seed(run.seed):
            for protocol in run.protocols:
                protocol.on_train_end(view, run.method)
            run.diagnostics.on_fit_end(view, run.method)
        if run.logger is not None:
            run.logger.finalize("success")

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sync(pl_module)
        for run in self.active():
            self.finish(trainer, pl_module, run)

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # Each seed still training records how the stack ended (interrupted, failed…).
        for run in self.active():
            run.diagnostics.on_exception(SeedView(trainer, run, {}), run.method, exception)

    @override
    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = {
            k[len(PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)
        }
        keys = {c.state_key for c in trainer.checkpoint_callbacks}
        name = checkpoint_name(checkpoint, keys)
        sums = getattr(pl_module.method, "_epoch_sums", {})  # the module's hook comes after
        for run in self.active():
            folder = run.run_dir / "checkpoints"
            path = folder / name
            seed_ckpt = seed_checkpoint(checkpoint, state, run, path, keys)
            seed_ckpt["faeval_epoch_sums"] = seed_sums(sums, run.index, len(self.runs))
            folder.mkdir(parents=True, exist_ok=True)
            # The trainer's checkpoint IO: AtomicCheckpointIO under faeval fit (never torn).
            trainer.strategy.checkpoint_io.save_checkpoint(seed_ckpt, path)
            previous = run.checkpoint
            if previous not in (None, path, run.resumed_from) and previous.is_file():
                previous.unlink()  # one checkpoint per run, as a lone run keeps by default
            run.checkpoint = path
        if self.state_key in checkpoint.get("callbacks", {}):  # the files this save wrote
            checkpoint["callbacks"][self.state_key] = self.state_dict()


def checkpoint_name(checkpoint: dict[str, Any], keys: set[str] | None = None) -> str:
    """The file name the stack's checkpoint callback is writing (each seed's has the same).

    Args:
        checkpoint: the stack's checkpoint being written.
        keys: the state keys of the stack's checkpoint callbacks (default: ``ModelCheckpoint``'s).
    """
    states = checkpoint.get("callbacks", {})
    keys = keys or {k for k in states if k.startswith("ModelCheckpoint")}
    for key in sorted(keys):
        state = states.get(key) or {}
        if key == LastCheckpoint.__name__ and state.get("last_model_path"):
            return Path(state["last_model_path"]).name  # last.ckpt
        if state.get("best_model_path"):
            return Path(state["best_model_path"]).name
    return f"epoch={checkpoint['epoch']}-step={checkpoint['global_step']}.ckpt"


def seed_sums(
    sums: dict[str, tuple[Any, int]], index: int, seeds: int
) -> dict[str, tuple[Any, int]]:
    """One seed's running epoch sums, as its lone run keeps them: each (K,) sum's slice."""
    out = {}
    for name, (total, count) in sums.items():
        if isinstance(total, torch.Tensor) and total.dim() > 0 and total.shape[0] == seeds:
            total = total[index : index + 1].clone()  # a lone run's sums have shape (1,)
        out[name] = (total, count)
    return out


def seed_checkpoint(
    checkpoint: dict[str, Any],
    state: dict[str, torch.Tensor],
    run: SeedRun,
    path: Path,
    keys: set[str] | None = None,
) -> dict[str, Any]:
    """The checkpoint the seed's lone run would write at this point (Lightning's format).

    The weights and every buffer are the seed's slice of the stack; so is the optimizer state
    (elementwise: each stacked tensor's slice is the seed's own state); the loops are the
    stack's (the same batches and steps, the same batch position); the callbacks' state is the
    seed's ``Diagnostics`` and ``Protocol`` and its checkpoint callbacks', pointed at its own
    folder. (Its running epoch sums are added by ``SeedRuns``.)

    Args:
        keys: the state keys of the stack's checkpoint callbacks (default: ``ModelCheckpoint``'s).
    """
    out = {
        k: v
        for k, v in checkpoint.items()
        if k not in ("state_dict", "optimizer_states", "callbacks", "hyper_parameters", *STACK_KEYS)
    }
    out["state_dict"] = seed_state(state, run.index)
    stacked_params = [p for p in run_parameters(state, run.method)]
    out["optimizer_states"] = [
        seed_optimizer_state(opt, stacked_params, run.index)
        for opt in checkpoint["optimizer_states"]
    ]
    # As Lightning keeps them: each callback's state under its key, when it has one.
    callbacks = {c.state_key: st for c in run.callbacks() if (st := c.state_dict())}
    states = checkpoint.get("callbacks", {})
    for key in keys or {k for k in states if k.startswith("ModelCheckpoint")}:
        if key in states:
            callbacks[key] = moved_checkpoint_state(states[key], path)
    out["callbacks"] = callbacks
    # As Lightning records the lone run's method and data module (faeval.hparams: plain data,
    # so that faeval audit can rebuild the data of a run that left no config.yaml).
    for obj in (run.method, run.datamodule):
        if obj is not None and obj.hparams:
            if hasattr(obj, "_hparams_name"):
                out[obj.CHECKPOINT_HYPER_PARAMS_NAME] = obj._hparams_name
            out[obj.CHECKPOINT_HYPER_PARAMS_KEY] = dict(obj.hparams)
    return out


def run_parameters(state: dict[str, torch.Tensor], method: CreditMethod) -> list[torch.Tensor]:
    """The stacked tensors of the method's trainable parameters, in the optimizer's order."""
    groups = method.parameter_groups()
    names = {id(p): n for n, p in method.named_parameters()}
    return [state[names[id(p)]] for group in groups for p in group["params"]]


def seed_optimizer_state(
    opt_state: dict[str, Any], params: list[torch.Tensor], index: int
) -> dict[str, Any]:
    """One seed's slice of an elementwise optimizer's state over stacked parameters.

    Raises:
        ValueError: a state tensor is neither a per-parameter scalar nor shaped like its
            stacked parameter (the optimizer is not elementwise).
    """
    state = {}
    for i, entry in opt_state["state"].items():
        shape = params[i].shape
        state[i] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if value.shape != shape:
                    raise ValueError(f"optimizer state {key} of shape {tuple(value.shape)}")
                value = value[index].clone()
            state[i][key] = value
    return {"state": state, "param_groups": opt_state["param_groups"]}


def moved_checkpoint_state(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """A ``ModelCheckpoint`` state moved to the seed's folder, with ``path`` its checkpoint
    (its best, or for ``LastCheckpoint`` its last: the one file each seed keeps)."""
    last = bool(state.get("last_model_path")) and not state.get("best_model_path")
    out = dict(state)
    out["dirpath"] = str(path.parent)
    out["best_model_path"] = "" if last else str(path)
    out["best_k_models"] = {}
    out["kth_best_model_path"] = ""
    out["last_model_path"] = str(path) if last else ""
    return out
