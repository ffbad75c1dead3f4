"""CreditBridge: credits as gradients of learned value functions of each layer's state.

A scalar value net V_l per layer l = 0..L, trained online on the detached trace by

    min ½·mean_i (V_L(h_L) − ℓ_i)²  +  lam · Σ_{l<L} ½·mean_i (V_l(h_l) − sg[V_{l+1}(h_{l+1})])²

(terminal target: the sample's loss; bridge consistency: each layer's value predicts the
next layer's, sg = stop-gradient, as in temporal-difference learning). If the values are
consistent, V_l(h_l) ≈ ℓ_i as a function of h_l, so its gradient stands in for ∂ℓ_i/∂h_l:

    a_l = ∇_{h_l} V_l(h_l).

During the first ``warmup_epochs`` epochs, while the values are still untrained, the credit
is DFA's, a_l = e·B_l with e = softmax(logits) − onehot(y) and B_l a fixed random C×|h_l|
matrix (the same draw as ``DFA`` with the same seed).
"""

from __future__ import annotations

import itertools
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import Trace
from faeval.errors import ConfigError
from faeval.methods.base import CreditMethod
from faeval.methods.common import direct_credits, direct_feedback, helper_nets, state_sizes
from faeval.seeding import resolve_seed


class CreditBridge(CreditMethod):
    """Credit bridge: a_l = ∇_{h_l} V_l, value nets trained online toward the sample's loss.

    The value nets train in the same optimizer step as the backbone, in a parameter group of
    their own learning rate. Logged: ``train/value_terminal`` (mean |V_L(h_L) − ℓ_i|) and
    ``train/value_bridge`` (mean |V_l(h_l) − V_{l+1}(h_{l+1})| over l < L). The epoch count
    that decides the warmup is a buffer, so a checkpoint audited later uses the credit its
    run was using.

    Args:
        value_width: hidden width of each value net.
        value_depth: number of linear layers of each value net (1: a linear value).
        value_lr: learning rate of the value nets' parameter group.
        lam: weight of bridge consistency against the terminal target.
        warmup_epochs: epochs of DFA credit before the values take over.
        feedback_seed: seed of the DFA feedback draw; default the run's seed.
        value_seed: seed of the value nets' initialisation; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(
        self,
        *args,
        value_width: int = 256,
        value_depth: int = 2,
        value_lr: float = 1e-3,
        lam: float = 1.0,
        warmup_epochs: int = 1,
        feedback_seed: int | None = None,
        value_seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if value_width < 1 or value_depth < 1 or value_lr <= 0 or lam < 0 or warmup_epochs < 0:
            raise ConfigError(
                f"CreditBridge needs value_width >= 1, value_depth >= 1, value_lr > 0, lam >= 0 "
                f"and warmup_epochs >= 0, got {value_width}, {value_depth}, {value_lr}, {lam}, "
                f"{warmup_epochs}"
            )
        self.value_lr = value_lr
        self.lam = lam
        self.warmup_epochs = warmup_epochs
        self.feedback = direct_feedback(self.backbone, resolve_seed(feedback_seed))
        dims = state_sizes(self.backbone)
        self.values = helper_nets(dims, 1, value_width, value_depth, resolve_seed(value_seed))
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self._warming_up = warmup_epochs > 0  # host copy of epoch < warmup_epochs for the step

    def warming_up(self) -> bool:
        """Whether the credit is still DFA's (epoch < warmup_epochs).

        Inside the training step it reads a host copy set when the epoch starts, so that no
        step waits on the device to branch; elsewhere (diagnostics, audit) the buffer.
        """
        if self._in_step:
            return self._warming_up
        return bool((self.epoch < self.warmup_epochs).all())

    def value(self, layer: int, h: Tensor) -> Tensor:
        """V_l(h_l), one scalar per sample. (B, ...) -> (B,)."""
        return self.values[layer](h.flatten(1)).squeeze(1)

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        if self.warming_up():
            return direct_credits(self.feedback, trace, y)  # DFA's e·B_l plays ∂ℓ/∂h_l
        with torch.enable_grad():
            inputs = [h.detach().requires_grad_(True) for h in trace.states]
            # Σ_l Σ_i V_l(h_l,i): its gradient in h_l is ∇V_l at each sample's own state.
            total = sum(self.value(i, h).sum() for i, h in enumerate(inputs))
            grads = torch.autograd.grad(total, inputs)
        return list(grads)

    @override
    def auxiliary_loss(self, trace: Trace, y: Tensor) -> Tensor:
        values = [self.value(i, h.detach()) for i, h in enumerate(trace.states)]
        target = F.cross_entropy(trace.logits.detach(), y, reduction="none")  # ℓ_i, (B,)
        terminal = values[-1] - target
        bridge = [v - v_next.detach() for v, v_next in itertools.pairwise(values)]
        self.accumulate("train/value_terminal", self.seed_means(terminal.abs()))
        self.accumulate(
            "train/value_bridge", torch.stack([self.seed_means(b.abs()) for b in bridge]).mean(0)
        )
        return self.batch_mean(terminal.pow(2)) / 2 + self.lam * sum(
            self.batch_mean(b.pow(2)) / 2 for b in bridge
        )

    @override
    def trained_helpers(self) -> tuple[nn.Module, float]:
        return self.values, self.value_lr

    @override
    def on_train_epoch_start(self) -> None:
        self.epoch.fill_(self.current_epoch)
        self._warming_up = self.current_epoch < self.warmup_epochs
