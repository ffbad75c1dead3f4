"""StateBridge: credits through small nets that predict the top state from each layer's state.

For each layer l = 0..L−1 a bridge S_l, trained online on the detached trace by

    min Σ_l ½·mean ‖S_l(h_l) − h_L‖²    (mean over samples and features of h_L),

stands in for the map h_l ↦ h_L that the blocks l+1..L compute (S_L is the identity). The
top credit is exact through the readout (terminal LN and head),

    a_L = ∂ℓ_i/∂h_L,

and the credit at a lower layer carries it back through the bridge's Jacobian instead of
the blocks' chain:

    a_l = J_{S_l}(h_l)ᵀ·a_L.

With exact bridges (S_l the blocks' own map) this is backprop's ∂ℓ_i/∂h_l.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import Trace
from faeval.errors import ConfigError
from faeval.methods.base import CreditMethod
from faeval.methods.common import helper_nets, state_sizes
from faeval.seeding import resolve_seed


class Bridge(nn.Module):
    """S(h) = N(h) (+ h with ``skip`` when the shapes agree), on flattened states."""

    def __init__(self, net: nn.Module, skip: bool) -> None:
        super().__init__()
        self.net = net
        self.skip = skip

    @override
    def forward(self, h: Tensor) -> Tensor:
        out = self.net(h)  # (B, |h_l|) -> (B, |h_L|)
        return out + h if self.skip else out


class StateBridge(CreditMethod):
    """State bridge: a_l = J_{S_l}(h_l)ᵀ·∂ℓ_i/∂h_L, S_l trained online to predict h_L from h_l.

    The bridges train in the same optimizer step as the backbone, in a parameter group of
    their own learning rate; their mean MSE is logged as ``train/bridge_loss``.

    Args:
        bridge_width: hidden width of each bridge net.
        bridge_depth: number of linear layers of each bridge net (1: a linear bridge).
        bridge_lr: learning rate of the bridges' parameter group.
        bridge_skip: add the identity, S_l(h) = h + N_l(h), where h_l and h_L have the same
            size (in a residual network h_L = h_l + the blocks' increments).
        bridge_seed: seed of the bridges' initialisation; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(
        self,
        *args,
        bridge_width: int = 256,
        bridge_depth: int = 2,
        bridge_lr: float = 1e-3,
        bridge_skip: bool = True,
        bridge_seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if bridge_width < 1 or bridge_depth < 1 or bridge_lr <= 0:
            raise ConfigError(
                f"StateBridge needs bridge_width >= 1, bridge_depth >= 1 and bridge_lr > 0, got "
                f"{bridge_width}, {bridge_depth}, {bridge_lr}"
            )
        self.bridge_lr = bridge_lr
        seed = resolve_seed(bridge_seed)
        dims = state_sizes(self.backbone)
        nets = helper_nets(dims[:-1], dims[-1], bridge_width, bridge_depth, seed)
        self.bridges = nn.ModuleList(
            Bridge(net, bridge_skip and d == dims[-1])
            for net, d in zip(nets, dims[:-1], strict=True)
        )

    def top_credit(self, h_top: Tensor, y: Tensor) -> Tensor:
        """a_L = ∂ℓ_i/∂h_L through the readout: the gradient of Σ_i ℓ_i, one row per sample."""
        with torch.enable_grad():
            h = h_top.detach().requires_grad_(True)
            loss = F.cross_entropy(self.backbone.readout(h), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, h)
        return grad

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        states = trace.states
        top = self.top_credit(states[-1], y)
        with torch.enable_grad():
            inputs = [h.detach().flatten(1).requires_grad_(True) for h in states[:-1]]
            # Σ_l ⟨S_l(h_l), a_L⟩: its gradient in h_l is J_{S_l}(h_l)ᵀ·a_L, per sample.
            pulled = sum(
                (bridge(h) * top.flatten(1)).sum()
                for bridge, h in zip(self.bridges, inputs, strict=True)
            )
            grads = torch.autograd.grad(pulled, inputs)
        return [g.view_as(h) for g, h in zip(grads, states[:-1], strict=True)] + [top]

    @override
    def auxiliary_loss(self, trace: Trace, y: Tensor) -> Tensor:
        target = trace.states[-1].detach().flatten(1)
        # ½·(S_l(h_l) − h_L)², per sample and feature; its mean over both, per seed when stacked
        errors = [
            (bridge(h.detach().flatten(1)) - target).pow(2) / 2
            for bridge, h in zip(self.bridges, trace.states[:-1], strict=True)
        ]
        self.accumulate(
            "train/bridge_loss", sum(self.seed_means(e) for e in errors) / len(self.bridges)
        )
        return sum(self.batch_mean(e) for e in errors)

    @override
    def trained_helpers(self) -> tuple[nn.Module, float]:
        return self.bridges, self.bridge_lr
