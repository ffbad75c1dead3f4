"""Target propagation: targets for every state, carried down by learned inverses of the blocks.

The family's shared machinery (``TP``, ``DTP``, ``DRL`` and ``LDRL`` differ only in how a
target goes down one block and in the loss their feedback nets learn from; docs/methods.md).
A feedback net G_l per block l = 1..L maps the state h_l back to h_{l-1} (flattened). The top
target is a gradient step on the sample's loss, exact through the readout:

    ĥ_L = h_L − η·∂ℓ_i/∂h_L,

and each target goes down one block either through the feedback net alone (TP) or with the
difference correction of Lee et al. (2015) (DTP, DRL, LDRL):

    TP:   ĥ_{l-1} = G_l(ĥ_l)
    DTP:  ĥ_{l-1} = h_{l-1} + G_l(ĥ_l) − G_l(h_l).

The credit is the displacement the target asks for, per unit of step:

    a_l = (h_l − ĥ_l) / η,

so a_L = ∂ℓ_i/∂h_L exactly, and the shared update ⟨f_l, a_l⟩ is the gradient of the layer-local
loss ½‖h_l − ĥ_l‖² of the target-propagation papers, divided by η (the forward learning rate
does not depend on η). The targets are computed as displacements δ_l = ĥ_l − h_l (δ_{l-1} =
G_l(h_l + δ_l) − G_l(h_l) with the difference correction), so no ĥ_l − h_l is formed at the
end; the difference of G_l's two outputs still loses digits as η shrinks, as it must.

The feedback nets train online beside the forward ones, as the bridges' helper nets do: their
loss is the method's ``auxiliary_loss``, added to the objective of the same optimizer step, in
a parameter group of its own learning rate (``trained_helpers``). Every G_l's loss reaches
only G_l's parameters (the states are detached, the blocks run without a graph), so one step
over all of them steps each G_l on its own loss. The credits of a step are those of the
feedback nets as they were before it.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import LayeredBackbone, Trace
from faeval.errors import ConfigError
from faeval.methods.common import mlp
from faeval.methods.ep import running_statistics_frozen
from faeval.methods.state_bridge import Bridge
from faeval.methods.step_draws import StepDrawMethod

#: The stream of the feedback nets' noise: (seed, NOISE_DRAWS, t, rank), per step, seed and rank.
NOISE_DRAWS = 2


def readout_gradient(backbone: LayeredBackbone, h_top: Tensor, y: Tensor) -> Tensor:
    """∂ℓ_i/∂h_L through the readout (terminal LN and head), one row per sample."""
    with torch.enable_grad():
        h = h_top.detach().requires_grad_(True)
        loss = F.cross_entropy(backbone.readout(h), y, reduction="sum")  # Σ_i ℓ_i
        (grad,) = torch.autograd.grad(loss, h)
    return grad


def feedback_nets(
    backbone: LayeredBackbone, width: int, depth: int, skip: bool, seed: int
) -> nn.ModuleList:
    """G_1..G_L (``[l - 1]`` is G_l), each a ``Bridge`` from |h_l| to |h_{l-1}| values.

    Where ``skip`` is set, the backbone adds the residual and the sizes agree, G_l(h) = h +
    N_l(h): the inverse of h ↦ h + F_l(h) is h minus (nearly) the branch, so N_l has only
    the branch to learn. Otherwise G_l = N_l. N_l is an ``mlp`` with PyTorch's default
    initialisation (random, as the papers' feedback weights start), drawn from ``seed``
    apart from the global stream. (A zero last layer, G_l = id at the start, would keep
    DTP's first credits on the positions that ∂ℓ/∂h_L touches: a ViT's class token alone.)
    """
    sizes = [math.prod(s) for s in backbone.state_shapes()]
    nets = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for d_in, d_out in zip(sizes[1:], sizes[:-1], strict=True):
            same = skip and backbone.residual_add and d_in == d_out
            nets.append(Bridge(mlp(d_in, d_out, width, depth), same))
    return nn.ModuleList(nets)


def block_map(backbone: LayeredBackbone, layer: int, h: Tensor) -> Tensor:
    """Φ_l(h) = combine(h, F_l(h)): block ``layer`` (1..L) with its residual add."""
    return backbone.combine(h, backbone.blocks[layer - 1](h))


def squared(v: Tensor) -> Tensor:
    """‖v‖² per sample, over the flattened state. (N, ...) -> (N,)."""
    return v.flatten(1).pow(2).sum(1)


def dot(u: Tensor, v: Tensor) -> Tensor:
    """⟨u, v⟩ per sample, over the flattened state. (N, ...) -> (N,)."""
    return (u.flatten(1) * v.flatten(1)).sum(1)


class TargetPropagation(StepDrawMethod):
    """Base of the target-propagation family: targets, credits and the feedback nets' loss.

    A subclass sets ``difference`` (the difference correction of DTP, or TP's plain inverse)
    and implements ``feedback_loss``, the per-sample loss G_l learns from. The feedback nets
    are registered modules (in every checkpoint) trained in the step's optimizer at their own
    learning rate, as the bridges are. The noise of step t is the step's draw
    (``StepDrawMethod``), from generators on the states' device seeded from (``feedback_seed``,
    ``NOISE_DRAWS``, t, rank), so a resumed run draws what an uninterrupted one would have. With
    seeds stacked (``faeval.stacked``) each seed draws the noise of its own rows from its own
    feedback seed's generator, as its lone run does.
    Logged: ``train/feedback_loss``, the feedback losses summed over layers (batch means), mean
    over the epoch's steps.

    Args:
        eta: η, the step of the output target ĥ_L = h_L − η·∂ℓ_i/∂h_L (scalingDTP's
            ``beta``, Meulemans et al.'s ``target_stepsize``).
        noise: σ, the scale of the Gaussian noise of the feedback losses.
        noise_samples: noise draws averaged in each step's feedback loss (scalingDTP's
            ``feedback_samples_per_iteration``).
        feedback_lr: learning rate of the feedback nets' parameter group.
        feedback_width: hidden width of each feedback net.
        feedback_depth: linear layers of each feedback net (1: linear).
        feedback_skip: G_l(h) = h + N_l(h), starting at the identity, where the backbone adds
            the residual and h_l and h_{l-1} have the same size.
        feedback_seed: seed of the feedback nets' initialisation and of the noise; default
            the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.

    Raises:
        ConfigError: a non-positive η, σ, learning rate, width, depth or sample count.
    """

    #: ĥ_{l-1} = h_{l-1} + G_l(ĥ_l) − G_l(h_l) (DTP's difference correction), else G_l(ĥ_l).
    difference: ClassVar[bool] = True
    stream = NOISE_DRAWS
    seed_key = "feedback_seed"

    def __init__(
        self,
        *args,
        eta: float = 0.1,
        noise: float = 0.1,
        noise_samples: int = 1,
        feedback_lr: float = 1e-3,
        feedback_width: int = 256,
        feedback_depth: int = 2,
        feedback_skip: bool = True,
        feedback_seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, draw_seed=feedback_seed, **kwargs)
        if (
            min(eta, noise, feedback_lr) <= 0
            or min(noise_samples, feedback_width, feedback_depth) < 1
        ):
            raise ConfigError(
                f"{type(self).__name__} needs eta, noise and feedback_lr > 0 and noise_samples, "
                f"feedback_width, feedback_depth >= 1, got eta={eta}, noise={noise}, "
                f"feedback_lr={feedback_lr}, noise_samples={noise_samples}, "
                f"feedback_width={feedback_width}, feedback_depth={feedback_depth}"
            )
        self.eta = eta
        self.noise = noise
        self.noise_samples = noise_samples
        self.feedback_lr = feedback_lr
        self.feedback = feedback_nets(
            self.backbone, feedback_width, feedback_depth, feedback_skip, self.draw_seed
        )

    # -- targets and credits ----------------------------------------------------------------

    def invert(self, layer: int, h: Tensor, like: Tensor) -> Tensor:
        """G_layer(h), shaped like the state ``like`` (h_{layer-1}). (N, ...) -> (N, ...)."""
        return self.feedback[layer - 1](h.flatten(1)).view_as(like)

    def displacements(self, trace: Trace, y: Tensor) -> list[Tensor]:
        """δ_l = ĥ_l − h_l for l = 0..L, the targets' displacements (no graph)."""
        states = trace.states
        with torch.no_grad():
            delta = -self.eta * readout_gradient(self.backbone, states[-1], y)  # ĥ_L − h_L
            out = [delta]
            for layer in range(len(states) - 1, 0, -1):
                h, below = states[layer], states[layer - 1]
                down = self.invert(layer, h + delta, below)  # G_l(ĥ_l)
                # DTP: ĥ_{l-1} − h_{l-1} = G_l(ĥ_l) − G_l(h_l); TP: G_l(ĥ_l) − h_{l-1}
                delta = down - (self.invert(layer, h, below) if self.difference else below)
                out.append(delta)
        return out[::-1]

    def targets(self, trace: Trace, y: Tensor) -> list[Tensor]:
        """The targets ĥ_0..ĥ_L."""
        return [h + d for h, d in zip(trace.states, self.displacements(trace, y), strict=True)]

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        # (h_l − ĥ_l)/η plays ∂ℓ_i/∂h_l: the layer-local loss ½‖h_l − ĥ_l‖²'s gradient over η
        return [-d / self.eta for d in self.displacements(trace, y)]

    # -- the feedback nets' loss ----------------------------------------------------------

    @abc.abstractmethod
    def feedback_loss(self, layer: int, states: list[Tensor], noise: list[Tensor]) -> Tensor:
        """The loss G_layer learns from, per sample (N,); its graph reaches G_layer only.

        Args:
            layer: l = 1..L.
            states: the detached states h_0..h_L of the batch.
            noise: standard normal draws shaped like the states ``noise_states`` names,
                scaled by σ here.
        """
        raise NotImplementedError

    def noise_states(self, layer: int) -> tuple[int, ...]:
        """Indices of the states whose shapes the noise of ``feedback_loss`` takes (h_{l-1})."""
        return (layer - 1,)

    def draw_noise(
        self, layer: int, states: list[Tensor], gens: list[torch.Generator]
    ) -> list[Tensor]:
        """Standard normal draws shaped like the states ``noise_states`` names, from the step's
        generators ``gens`` (``StepDrawMethod.step_draws``: with K seeds stacked, seed k's rows
        from seed k's generator in the shape of one seed's rows, exactly what its lone run
        draws, joined seed-major)."""

        def normal(gen: torch.Generator, h: Tensor) -> Tensor:
            return torch.randn(h.shape, generator=gen, device=h.device, dtype=h.dtype)

        return [
            torch.cat(self.step_draws(normal, states[i], generators=gens))  # (K·B, ...)
            for i in self.noise_states(layer)
        ]

    @override
    def auxiliary_loss(self, trace: Trace, y: Tensor) -> Tensor:
        """Σ_l the batch mean of G_l's loss, each averaged over ``noise_samples`` draws.

        Draws layer by layer from l = 1 up, ``noise_samples`` times each, every draw taking
        the states ``noise_states`` names in order. BatchNorm's running statistics stay put
        in the blocks' extra passes.
        """
        states = [h.detach() for h in trace.states]
        # under DDP each rank draws its own noise, for its own shard of the batch
        gens = self.step_generators(self.global_rank, device=states[0].device)
        seeds = self.stack_size
        total, figure = 0.0, 0.0
        with running_statistics_frozen(self.backbone):
            for layer in range(1, len(states)):
                losses = [
                    self.feedback_loss(layer, states, self.draw_noise(layer, states, gens))
                    for _ in range(self.noise_samples)
                ]
                loss = torch.stack(losses).mean(0)  # (N,): each sample's, mean over draws
                total = total + self.batch_mean(loss)
                # each seed's batch mean, (K,): the sum over its rows, as batch_mean takes it
                rows = loss.detach().chunk(seeds)
                figure = figure + torch.stack([r.sum() for r in rows]) / len(rows[0])
        self.accumulate("train/feedback_loss", figure)
        return total

    @override
    def trained_helpers(self) -> tuple[nn.Module, float]:
        return self.feedback, self.feedback_lr


def noisy_reconstruction(
    method: TargetPropagation, layer: int, states: list[Tensor], noise: list[Tensor]
) -> Tensor:
    """‖G_l(Φ_l(h̃)) − h̃‖² per sample, h̃ = h_{l-1} + σξ: TP's and DTP's feedback loss.

    Lee et al. (2015); scalingDTP's ``vanilla_DTP_feedback_loss``. (N,).
    """
    below = states[layer - 1]
    corrupted = below + method.noise * noise[0]  # h̃ = h_{l-1} + σξ
    with torch.no_grad():
        up = block_map(method.backbone, layer, corrupted)  # Φ_l(h̃)
    return squared(method.invert(layer, up, below) - corrupted)
