"""The method template: one training step shared by every method; a method only says its credits.

The update every method shares (docs/notation.md): the embedding gets ⟨h_0, a_0⟩, block l gets
⟨F_l(h_{l-1}.detach()), a_l⟩ (summed over features, averaged over the batch), the readout
(terminal LN and head) gets its exact cross-entropy gradient with h_L detached, plus the
optional penalty λ·Σ_l ‖f_l‖² on block outputs. One optimizer step per batch.

Credits a_l are on the scale of one sample's loss ℓ_i (so ⟨f_l, a_l⟩ averaged over the batch
has the gradient of the mean loss when a_l is exact); the diagnostics' g_l carries the 1/N of
the mean. Cosines do not see the difference.

Seeds stacked in one batch (``faeval.stacked``): a method may train K independent seeds at
once on a batch of K·B rows, seed-major (rows k·B…(k+1)·B are seed k's). Every mean over the
batch is then taken over each seed's own B rows and summed over seeds (``batch_mean``), so
each seed's gradient is exactly its own batch mean's: a mean over all K·B rows would scale
every gradient by 1/K.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from faeval.backbones import LayeredBackbone, ResMLP, Trace
from faeval.data.contract import check_labels
from faeval.errors import ConfigError
from faeval.hparams import CLASS_PATH, plain_hparams
from faeval.quiet import quiet_lightning
from faeval.runlog import METHOD

quiet_lightning()  # Lightning's tips and the warnings nobody can act on (faeval.quiet)
log = logging.getLogger("faeval")

BackboneFactory = Callable[[tuple[int, ...], int], LayeredBackbone]

#: The stacking of a method class that does not declare its own (``CreditMethod.stack_refusal``).
UNDECLARED_STACKING = (
    "its class does not declare whether its step keeps every seed's rows apart (set "
    "stack_refusal = None in the class once checked, or the reason it does not stack; "
    "docs/extending.md)"
)


def batch_mean(values: Tensor, seeds: int = 1) -> Tensor:
    """The mean of per-sample values over the batch (and over any trailing dimensions).

    With ``seeds`` = K seeds stacked seed-major, the sum over seeds of each seed's own mean:
    sum / (numel / K). Its gradient is 1/(numel / K) on every element, exactly what seed k's
    own mean gives it alone.
    """
    return values.sum() / (values.numel() // seeds)


def block_penalty(outputs: list[Tensor], seeds: int = 1) -> Tensor:
    """Σ_l ‖f_l‖², per sample over the flattened block output, averaged over the batch."""
    return sum(batch_mean(f.flatten(1).pow(2).sum(1), seeds) for f in outputs)


def local_objective(trace: Trace, credits: list[Tensor], seeds: int = 1) -> Tensor:
    """⟨h_0, a_0⟩ + Σ_l ⟨f_l, a_l⟩, summed over features and averaged over the batch.

    Its gradient is ⟨∂h_0/∂θ, a_0⟩ for the embedding and ⟨∂f_l/∂θ, a_l⟩ for block l: a_l
    plays the role of ∂ℓ/∂h_l. With K seeds stacked, averaged over each seed's rows.
    """
    n = trace.logits.shape[0] // seeds  # samples per seed
    terms = [trace.states[0], *trace.outputs]
    return sum((t * a.detach()).sum() for t, a in zip(terms, credits, strict=True)) / n


def _fuse(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Rebuilds an optimizer with ``fused=True`` where it offers the option and it was unset.

    Fused Adam gives the same updates (within 3e-8 here) at ~21% less time per epoch on CPU.
    """
    if optimizer.defaults.get("fused", False) is not None:
        return optimizer  # no fused option, or the user chose
    groups = optimizer.param_groups
    if not all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for group in groups
        for p in group["params"]
    ):
        return optimizer
    return type(optimizer)(
        [{**g, "fused": True} for g in groups], **{**optimizer.defaults, "fused": True}
    )


def built_backbone(
    backbone: BackboneFactory | LayeredBackbone,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
) -> LayeredBackbone:
    """The method's network: ``backbone`` itself when built, else built for the data.

    Raises:
        ValueError: no shape or class count to build from, or a built network made for
            other data than the given shape and class count.
    """
    if isinstance(backbone, LayeredBackbone):
        if input_shape is not None or num_classes is not None:
            backbone.check_input(
                backbone.input_shape if input_shape is None else input_shape,
                backbone.num_classes if num_classes is None else num_classes,
            )
        return backbone
    if input_shape is None or num_classes is None:
        raise ValueError(
            f"building the backbone needs input_shape and num_classes, got {input_shape} and "
            f"{num_classes}; pass them (faeval fit links them from --data) or a built network"
        )
    return backbone(tuple(input_shape), num_classes)


class CreditMethod(LightningModule, abc.ABC):
    """Base of every faeval method: owns the training step, subclasses implement ``credits``.

    A subclass lists its own arguments and forwards the rest (``**kwargs``) here, so the
    arguments below are written once; ``faeval fit --model.help NAME`` lists them all.

    Its hyperparameters are recorded as plain data, as LightningCLI records them, however
    the method was built (``faeval.hparams``): its checkpoints load weights-only and
    ``faeval audit`` can read them.

    Args:
        input_shape: per-sample input shape (``faeval fit`` links it from the data); may be
            left out when ``backbone`` is a network already built.
        num_classes: C (linked from the data); may be left out likewise.
        backbone: the network, built as ``backbone(input_shape, num_classes)``; on the
            command line ``--model.backbone ResMLP --model.backbone.d_hidden 512``. From
            Python it may also be a network already built (a ``LayeredBackbone``, e.g. a
            ``faeval.backbones.Wrapped`` model of your own): it is trained in place.
        optimizer: one optimizer for all trained parameters (Adam is made fused when the
            option is left unset).
        penalty: λ of the penalty λ·Σ_l ‖f_l‖² on block outputs.

    Raises:
        ValueError: a negative penalty; no input shape or class count to build the
            backbone from; a built backbone that does not match the given shape.
    """

    #: Train blocks through the local loss ⟨f_l, a_l⟩ on a detached trace. BP-like methods set
    #: this off and backpropagate the cross-entropy through the connected graph instead.
    local: ClassVar[bool] = True
    #: Written in every diagnostics row: ``method``, or ``depth_baseline`` for the run that
    #: diagnostic (d) compares the others against.
    role: ClassVar[str] = METHOD
    #: K, the seeds stacked in each batch (seed-major rows); ``faeval.stacked`` sets it on the
    #: stacked copy of a method. Reductions over the batch go through ``batch_mean``.
    stack_size: int = 1
    #: Why ``faeval fit --seeds`` cannot stack this method, one line; ``None`` once its step
    #: was checked to keep every seed's rows apart (means through ``batch_mean``, state in
    #: modules ``faeval.stacked`` knows). Read from the class's own body only: a subclass that
    #: does not declare it does not stack, whatever its parent says (it may change the
    #: credits or losses). ``faeval.stacked``, the sweep's layout and the refusal read it.
    stack_refusal: ClassVar[str | None] = UNDECLARED_STACKING

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "stack_refusal" not in vars(cls):  # said nothing: not stackable (``stack_refusal``)
            cls.stack_refusal = UNDECLARED_STACKING

    def __init__(
        self,
        input_shape: tuple[int, ...] | None = None,
        num_classes: int | None = None,
        backbone: BackboneFactory = ResMLP,  # or a built LayeredBackbone (kept off the CLI's type)
        optimizer: OptimizerCallable = torch.optim.Adam,
        penalty: float = 0.0,
    ) -> None:
        super().__init__()
        if penalty < 0:
            raise ConfigError(f"penalty must be >= 0, got {penalty}")
        built = isinstance(backbone, LayeredBackbone)
        if built:  # recorded as what the network was built for: Lightning merges these with
            # the data module's hyperparameters and refuses a None against a value
            input_shape = backbone.input_shape if input_shape is None else input_shape
            num_classes = backbone.num_classes if num_classes is None else num_classes
        # A built network is in the checkpoint as weights; as a hyperparameter it is not data.
        self.save_hyperparameters(ignore=["backbone"] if built else None)
        if CLASS_PATH not in self.hparams:  # built from Python: record what the CLI records
            self.save_hyperparameters(plain_hparams(type(self), self.hparams))
        self.automatic_optimization = False
        self.backbone = built_backbone(backbone, input_shape, num_classes)
        self.optimizer_factory = optimizer
        self.penalty = penalty
        self.test_acc = MulticlassAccuracy(self.backbone.num_classes, average="micro")
        self.test_loss = MeanMetric()
        self._epoch_sums: dict[str, tuple[Tensor | float, int]] = {}
        self._restored_epochs = 0  # epochs trained by the checkpoint an evaluation loaded
        self._in_step = False
        self._labels_checked: set[str] = set()  # the stages whose first batch was checked

    @abc.abstractmethod
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        """The credit signals a_0..a_L, each shaped like h_l, meant to approximate ∂ℓ_i/∂h_l.

        Args:
            trace: a detached forward trace of the batch (states h_0..h_L, outputs, logits).
            y: the labels the method trains on.
        """
        raise NotImplementedError

    def auxiliary_loss(self, trace: Trace, y: Tensor) -> Tensor | float:
        """Loss of the method's own trained helpers (bridge or value nets), 0 by default.

        Added to the objective of the same optimizer step; it must only reach the helpers'
        parameters (``trace`` is detached).
        """
        return 0.0

    def trained_helpers(self) -> tuple[nn.Module, float] | None:
        """The method's own trained nets (bridges, value nets) and their learning rate."""
        return None

    def feedback_pairs(self) -> list[tuple[str, Tensor, Tensor]]:
        """(name, W, B) of each layer whose backward uses a feedback matrix B in place of its
        weight W (the layer-wise feedback methods); the diagnostics log the angle between W
        and B and ‖B‖/‖W‖ for each. None by default."""
        return []

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups: the network's, then the helpers' at their own rate."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        helpers = self.trained_helpers()
        if helpers is None:
            return [{"params": trainable}]
        nets, lr = helpers
        ids = {id(p) for p in nets.parameters()}
        return [
            {"params": [p for p in trainable if id(p) not in ids]},
            {"params": list(nets.parameters()), "lr": lr},
        ]

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "input_shape"):
            self.backbone.check_input(datamodule.input_shape, datamodule.num_classes)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def check_labels_once(self, y: Tensor, stage: str) -> None:
        """Refuses labels that are not class indices in 0..C−1, on a stage's first batch.

        A user's data module may give float labels or more classes than it declares; the
        cross-entropy would fail deep in torch (or, on a GPU, with a device-side assert).

        Raises:
            DataContractError: float or one-hot labels, or a label outside 0..C−1.
        """
        if stage in self._labels_checked:
            return
        datamodule = getattr(self._trainer, "datamodule", None)
        source = f"{type(datamodule).__name__}'s " if datamodule is not None else "the "
        check_labels(y, self.backbone.num_classes, f"{source}{stage} batches")
        self._labels_checked.add(stage)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.check_labels_once(y, "training")
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self._in_step = True
        try:
            objective, losses = self.step_objective(x, y)
            self.manual_backward(objective)
            opt.step()
            self.accumulate("train/loss", self.seed_means(losses))
        finally:
            self._in_step = False
        return objective.detach()

    def step_objective(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The objective whose gradient is the step's update, and the per-sample losses ℓ_i.

        The forward pass, the credits and the local and auxiliary losses: everything of the
        step but the backward pass and the optimizer (what ``faeval.stacked`` may compile).
        """
        trace = self.backbone.trace(x, detach=self.local)
        losses = F.cross_entropy(trace.logits, y, reduction="none")  # ℓ_i, (N,)
        return self.update_objective(trace, y, losses), losses

    def update_objective(self, trace: Trace, y: Tensor, losses: Tensor) -> Tensor:
        """The objective whose gradient is the step's update, from the step's forward pass.

        By default the shared update: the mean loss (for a local method, the readout's exact
        gradient), the penalty, ⟨h_0, a_0⟩ + Σ_l ⟨f_l, a_l⟩ with the method's credits and
        the auxiliary loss. A method whose update is not of this form (PC taking the energy's
        gradient at its relaxed states) overrides it.

        Args:
            trace: the forward trace, connected to the parameters (each block input and the
                readout's input detached when ``local``).
            y: the labels the method trains on.
            losses: the per-sample losses ℓ_i of ``trace.logits``, (N,).
        """
        objective = self.batch_mean(losses)
        if self.penalty:
            objective = objective + self.penalty * block_penalty(trace.outputs, self.stack_size)
        if self.local:
            detached = trace.detached()
            credits = self.credits(detached, y)
            objective = objective + local_objective(trace, credits, self.stack_size)
            objective = objective + self.auxiliary_loss(detached, y)
        return objective

    def batch_mean(self, values: Tensor) -> Tensor:
        """The batch mean of per-sample values, per seed when seeds are stacked (``batch_mean``).

        Every mean over the batch that reaches a gradient goes through here.
        """
        return batch_mean(values, self.stack_size)

    def seed_apart(self, fn: Callable[[Tensor], Tensor], values: Tensor) -> Tensor:
        """``fn`` of per-sample values (N, ...), on each seed's rows apart when seeds are stacked.

        For an elementwise function whose CPU kernel rounds by position in its tensor: sigmoid,
        softplus, exp run a vectorised body and a scalar tail that round differently (sigmoid:
        151 of 4096 normal inputs under AVX512), so on a stack of K·B values a seed's rows
        may fall in the body where alone they fell in the tail. One call per seed gives each
        seed its lone run's bits, whatever B is.
        """
        if self.stack_size == 1:
            return fn(values)
        return torch.cat([fn(part) for part in values.chunk(self.stack_size)])

    def seed_means(self, values: Tensor) -> Tensor:
        """Each seed's mean of per-sample values, detached, for logging. (K·B, ...) -> (K,)."""
        return values.detach().reshape(self.stack_size, -1).mean(1)

    def accumulate(self, name: str, value: Tensor | float) -> None:
        """Adds a per-step figure to its epoch mean, logged as ``name`` when the epoch ends.

        Methods call it from ``credits`` or ``auxiliary_loss``; only calls made inside the
        training step count, so the diagnostic passes (which ask for credits too) leave the
        epoch means alone. Far cheaper than ``self.log`` on every step (about 1 ms a call on
        CPU, 15% of a ResMLP step), and free of device syncs until the epoch ends.
        """
        if not self._in_step:
            return
        if isinstance(value, Tensor):
            value = value.detach()
        total, count = self._epoch_sums.get(name, (0.0, 0))
        self._epoch_sums[name] = (total + value, count + 1)

    def epoch_means(self, seed: int | None = None) -> dict[str, float]:
        """The means of the figures accumulated in the current epoch so far, over every rank.

        Under DDP this is a collective (one all-reduce of the sums and counts): every rank
        must call it, the same number of times, and they all get the same means.

        Args:
            seed: with seeds stacked, the index of the seed in the stack (figures are then
                accumulated per seed, as ``seed_means`` gives them: (K,) sums).
        """
        sums = self._epoch_sums
        trainer = self._trainer
        if sums and trainer is not None and trainer.world_size > 1:
            sums = self._reduced_sums(trainer)
        means = {}
        for name, (total, count) in sums.items():
            mean = total / count
            if isinstance(mean, Tensor) and mean.numel() > 1:
                if seed is None:
                    raise ValueError(f"{name} is accumulated per seed; pass the seed's index")
                mean = mean[seed]
            means[name] = float(mean)
        return means

    def _reduced_sums(self, trainer) -> dict[str, tuple[Tensor, Tensor]]:
        """The epoch's sums and counts summed over ranks: one all-reduce, any sum's shape."""
        sums = self._epoch_sums
        names = sorted(sums)  # the same names on every rank: the same code ran
        parts = [
            torch.as_tensor(sums[k][0], dtype=torch.float32, device=self.device).reshape(-1)
            for k in names
        ]
        counts = torch.tensor([float(sums[k][1]) for k in names], device=self.device)
        totals = trainer.strategy.reduce(torch.cat([*parts, counts]), reduce_op="sum")
        out, at = {}, 0
        for i, (name, part) in enumerate(zip(names, parts, strict=True)):
            total = totals[at : at + part.numel()]
            out[name] = (total if part.numel() > 1 else total[0], totals[-len(names) + i])
            at += part.numel()
        return out

    def clear_epoch_means(self) -> None:
        """Starts the next epoch's figures afresh."""
        self._epoch_sums.clear()

    def log_epoch(self, metrics: dict[str, float]) -> None:
        """Logs an epoch's figures at x = epochs completed.

        Callbacks (early stopping, checkpoints) see them through ``self.log``; the logger gets
        them at x = epoch rather than at the global step, so runs of any batch size or
        ``limit_train_batches`` line up, and the diagnostics rows share the same x.
        """
        for name, value in metrics.items():
            # The figures are already reduced over ranks (epoch_means, torchmetrics' compute);
            # sync_dist keeps Lightning's DDP check quiet and every rank's callbacks agree.
            self.log(name, value, logger=False, sync_dist=True)
        if self.logger is not None and not self.trainer.sanity_checking:
            self.logger.log_metrics(metrics, step=self.epochs_completed())

    def epochs_completed(self) -> int:
        """Epochs trained so far, counting the one ending now while fitting.

        ``faeval test``/``validate`` restore the weights but not the loops (current_epoch
        is 0 there): the epochs the checkpoint had trained are read from it, so that an
        evaluation sits at the x of the training curve's last point.
        """
        if self.trainer.state.fn == TrainerFn.FITTING:
            return self.current_epoch + 1
        return max(self.current_epoch, self._restored_epochs)

    @override
    def on_train_epoch_end(self) -> None:
        self.log_epoch(self.epoch_means())
        self.clear_epoch_means()

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The epoch's running sums: a run resumed mid-epoch logs the same epoch means.
        checkpoint["faeval_epoch_sums"] = {k: tuple(v) for k, v in self._epoch_sums.items()}

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._epoch_sums = dict(checkpoint.get("faeval_epoch_sums", {}))
        # Epochs whose training ended before the save (Lightning's fit loop counts an epoch
        # as processed before its end-of-epoch checkpoints are written).
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
        self._restored_epochs = int(progress.get("current", {}).get("processed", 0))

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.check_labels_once(y, "validation")
        logits = self.backbone(x)
        self.test_acc.update(logits, y)
        self.test_loss.update(F.cross_entropy(logits, y), weight=len(y))

    @override
    def on_validation_epoch_end(self) -> None:
        metrics = {
            "test/acc": float(self.test_acc.compute()),
            "test/loss": float(self.test_loss.compute()),
        }
        self.test_acc.reset()
        self.test_loss.reset()
        self.log_epoch(metrics)

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    @override
    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.build_optimizer()

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over ``parameter_groups`` (also the stacked seeds' optimizer).

        Raises:
            ConfigError: the optimizer refuses its settings (a negative learning rate, betas
                outside [0, 1), …).
        """
        try:
            optimizer = self.optimizer_factory(self.parameter_groups())
        except ValueError as err:  # torch's optimizers check lr >= 0, betas, eps, decay
            raise ConfigError(
                f"the optimizer refused its settings: {err}; set --model.optimizer.lr (and the "
                "other --model.optimizer.* options) to values it accepts, e.g. lr 1e-3"
            ) from None
        if optimizer.param_groups[0].get("lr") == 0:
            log.warning(
                "the optimizer's learning rate is 0: the network will not train; set "
                "--model.optimizer.lr, e.g. 1e-3"
            )
        return _fuse(optimizer)
