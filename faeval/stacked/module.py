"""The LightningModule of a stack: K seeds of one method trained by one optimizer step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from typing_extensions import override

from faeval.methods import CreditMethod
from faeval.stacked.convert import check_optimizer, stack_methods

#: Where a stack's checkpoint records its seeds' method hyperparameters (the stack module has
#: none of its own): ``faeval fit --seeds … --ckpt_path`` checks the given options against them.
HPARAMS_KEY = "faeval_stack_hyper_parameters"


class SeedStack(LightningModule):
    """Trains K seeds of one method at once: stacked parameters, seed-major batches of K·B rows.

    The stacked method (``self.method``, a child LightningModule attached to the same trainer)
    runs its own ``training_step`` on the stacked batch: each mean over the batch is per seed,
    so every seed's update is the one its lone run makes. One optimizer (made fused, as a lone
    run's) steps all seeds; it must be elementwise, so that it is K independent optimizers.
    Validation measures every seed's test accuracy and loss on the shared test split;
    ``SeedRuns`` writes each seed's figures to that seed's run folder.

    Args:
        methods: the K seeds' methods, each built as its lone run builds it.
        compile: compile the step's forward, credits and objective with ``torch.compile``
            (one static graph for full batches and one for the last, smaller one: both are
            compiled in the first epoch and reused after).
    """

    def __init__(self, methods: list[CreditMethod], compile: bool = False) -> None:
        super().__init__()
        self.method = stack_methods(methods)
        self.seeds = len(methods)
        self.compile_step = compile
        self.automatic_optimization = False
        self.test_figures: dict[str, list[float]] = {}
        self._val: list[Tensor] = []

    @override
    def setup(self, stage: str) -> None:
        self.method.setup(stage)
        if self.compile_step and not hasattr(
            self.method.step_objective, "_torchdynamo_orig_callable"
        ):
            self.method.step_objective = torch.compile(self.method.step_objective, dynamic=False)

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.method.backbone(x)

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.method.training_step(batch, batch_idx)

    @override
    def on_train_epoch_start(self) -> None:
        self.method.on_train_epoch_start()

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.method.on_before_optimizer_step(optimizer)  # KP's decay of W and B

    @override
    def on_train_epoch_end(self) -> None:
        self.method.clear_epoch_means()  # SeedRuns has written each seed's means by now

    def epoch_means(self, seed: int) -> dict[str, float]:
        """The method's figures of the epoch so far (``train/loss`` …) for the seed at ``seed``."""
        return self.method.epoch_means(seed)

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The method's running epoch sums ((K,) per figure): a stack resumed mid-epoch logs
        # the same epoch means (Lightning calls this hook on the root module only).
        self.method.on_save_checkpoint(checkpoint)
        checkpoint[HPARAMS_KEY] = dict(self.method.hparams)  # every seed's (one config)

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.method.on_load_checkpoint(checkpoint)

    @override
    def on_validation_epoch_start(self) -> None:
        # Lightning's own epoch mean of a logged test/loss: float32 Σ (batch mean · batch size)
        # over the integer count; accuracy: integer counts, divided as torchmetrics does.
        self._val = [
            torch.zeros(self.seeds, dtype=torch.long, device=self.device),  # correct
            torch.zeros(self.seeds, device=self.device),  # Σ batch loss · batch size
            torch.zeros((), dtype=torch.long, device=self.device),  # samples
        ]

    @override
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.method.check_labels_once(y, "validation")
        k, n = self.seeds, len(x)
        xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])  # every seed's copy
        logits = self.method.backbone(xs).view(k, n, -1)  # (K, B, C)
        correct, loss_sum, count = self._val
        losses = torch.stack([F.cross_entropy(z, y) for z in logits])  # a lone run's batch means
        self._val = [correct + (logits.argmax(2) == y).sum(1), loss_sum + losses * n, count + n]

    @override
    def on_validation_epoch_end(self) -> None:
        correct, loss_sum, count = self._val
        self.test_figures = {
            "test/acc": (correct / count).tolist(),
            "test/loss": (loss_sum / count).tolist(),
        }

    @override
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    @override
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    @override
    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = self.method.build_optimizer()
        check_optimizer(optimizer)
        return optimizer
