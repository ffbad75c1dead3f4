"""FF: Forward-Forward, each layer trained to tell positive data from negative by its goodness."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import Trace
from faeval.errors import ConfigError
from faeval.methods.base import block_penalty, local_objective
from faeval.methods.ep import running_statistics_frozen
from faeval.methods.step_draws import StepDrawMethod
from faeval.seeding import mixed_seed


class FF(StepDrawMethod):
    """Forward-Forward (Hinton 2022): per-layer goodness of positive and negative data.

    Every layer l = 0..L has its own loss on the goodness G_l = mean_j h_lj² (as
    mpezeshki/pytorch_forward_forward computes it, with θ = 2; ``goodness="sum"`` for
    Σ_j h_lj², the paper's formula) of a positive pass (the input with its true label) and a
    negative one (the same input with a wrong label):

        L_l = softplus(−(G_l⁺ − θ)) + softplus(G_l⁻ − θ),

    the paper's logistic p(positive) = σ(G − θ) as a loss, so that G_l > θ on positive data
    and < θ on negative data (that code averages the two terms over the concatenated batch:
    half of L_l's mean). Each pass's credit is
    a_l^± = ∂L_l/∂h_l^± at its own states, and each pass trains the blocks by the shared
    local update on its own trace: block l gets ⟨F_l(h_{l-1}^+), a_l^+⟩ + ⟨F_l(h_{l-1}^-), a_l^-⟩
    (block inputs detached: layer l's loss trains layer l alone, as in FF). The readout
    (terminal LN and head) is trained as every method's, by its exact cross-entropy gradient on
    a third pass with no label, which is also what the tests and diagnostics run (Hinton's
    softmax readout on a neutral label). The credit the diagnostics compare with g_l is
    a_l^+ + a_l^-, the two passes' credits at their states: the pull of layer l's goodness
    loss on h_l, which nothing ties to the cross-entropy.

    Hinton normalises each layer's input to unit length, so that a layer cannot pass its
    goodness on to the next. faeval's pre-LN blocks normalise the block's input as well, but
    with the residual add h_l = h_{l-1} + f_l carries the goodness of h_{l-1} into h_l's: block
    l learns what it must add to it (pass ``--model.backbone.residual_add false`` for
    Hinton's plain stack).

    The label. Hinton replaces the first C pixels of an MLP's input by onehot(y); the first
    layer's weights on those pixels then add a learned vector per label to its input. faeval's
    layered backbones take x only through their embedding, so the label enters at h_0 in the
    same form: h_0^± = h_0 + (onehot(y^±) − 1/C)·E, with E (C × h_0's shape) a parameter of
    the method trained with the embedding by layer 0's loss. It is centred so that the neutral
    label (1/C for every class, Hinton's neutral input) adds nothing: the unlabelled pass is
    the backbone's own forward pass. For a linear embedding this is x with onehot(y) appended
    (the label's constant part in the bias), and Hinton's overwritten pixels are MNIST's
    blank border, so the same.

    Negative labels are drawn per step (``StepDrawMethod``): ``negatives="random"`` uniformly
    among the C − 1 wrong classes, ``"hard"`` in proportion to the readout's predicted
    probabilities of the wrong classes (Hinton's "use the network's own predictions"). The
    labelled passes leave BatchNorm's running statistics alone.

    Args:
        threshold: θ.
        goodness: ``"mean"`` or ``"sum"`` of the squared state over its features.
        negatives: how wrong labels are drawn.
        label_scale: std of E's entries at initialisation.
        *args, **kwargs: ``draw_seed`` (``StepDrawMethod``) and the arguments of
            ``CreditMethod``.

    Raises:
        ConfigError: ``label_scale`` < 0, or an unknown choice.
    """

    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    stream = 4  # the (seed, 4, t) stream of negative labels; (seed, 4) draws E

    def __init__(
        self,
        *args,
        threshold: float = 2.0,
        goodness: Literal["mean", "sum"] = "mean",
        negatives: Literal["random", "hard"] = "random",
        label_scale: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if goodness not in ("mean", "sum") or negatives not in ("random", "hard"):
            raise ConfigError(
                f"FF's goodness is 'mean' or 'sum' and negatives 'random' or 'hard', got "
                f"{goodness!r} and {negatives!r}"
            )
        if label_scale < 0:
            raise ConfigError(f"FF needs label_scale >= 0, got {label_scale}")
        classes = self.backbone.num_classes  # >= 2: the base's accuracy metric refuses fewer
        self.threshold = threshold
        self.goodness = goodness
        self.negatives = negatives
        shape = self.backbone.state_shapes()[0]
        # E's own stream (seed, 4): apart from the weights' and the per-step draws
        gen = torch.Generator().manual_seed(mixed_seed(self.draw_seed, self.stream))
        self.label_embedding = nn.Parameter(
            torch.randn((classes, *shape), generator=gen) * label_scale
        )

    def negative_labels(self, logits: Tensor, y: Tensor) -> Tensor:
        """A wrong label per sample, drawn from the step's generator (with seeds stacked, each
        seed's rows from its own: ``StepDrawMethod.step_draws``). (N,)."""
        return torch.cat(self.step_draws(self.draw_negatives, logits, y))

    def draw_negatives(self, gen: torch.Generator, logits: Tensor, y: Tensor) -> Tensor:
        """One seed's wrong labels, drawn from ``gen``. (B,)."""
        classes = self.backbone.num_classes
        if self.negatives == "random":  # y + a shift in 1..C−1, mod C: uniform over wrong ones
            shift = torch.randint(1, classes, (len(y),), generator=gen).to(y.device)
            return (y + shift) % classes
        p = torch.softmax(logits.detach().float(), dim=1).cpu()
        p[torch.arange(len(y)), y.cpu()] = 0  # the true class is never drawn
        p = p + (p.sum(1, keepdim=True) == 0)  # all mass on the true class: uniform instead
        p[torch.arange(len(y)), y.cpu()] = 0
        return torch.multinomial(p, 1, generator=gen).flatten().to(y.device)

    def labelled(self, h0: Tensor, labels: Tensor) -> Tensor:
        """h_0 + (onehot(labels) − 1/C)·E: the embedding output with a label added (with seeds
        stacked, E (seeds, C, *h_0's shape) holds each seed's own, for its own rows)."""
        classes, seeds = self.backbone.num_classes, self.stack_size
        centred = F.one_hot(labels, classes).to(h0.dtype) - 1 / classes  # (N, C)
        tables = [self.label_embedding] if seeds == 1 else self.label_embedding.unbind()
        # (B, C) @ (C, |h_0|) -> (B, |h_0|) per seed, seed-major as the batch, shaped like h_0
        added = [c @ e.flatten(1) for c, e in zip(centred.chunk(seeds), tables, strict=True)]
        return h0 + (added[0] if seeds == 1 else torch.cat(added)).view_as(h0)

    def passes(self, h0: Tensor, logits: Tensor, y: Tensor) -> tuple[Trace, Trace]:
        """The positive and the negative pass from h_0, block inputs detached."""
        negative = self.negative_labels(logits, y)
        with running_statistics_frozen(self.backbone):
            pos = self.backbone.trace_from(self.labelled(h0, y), 0, detach=True)
            neg = self.backbone.trace_from(self.labelled(h0, negative), 0, detach=True)
        return pos, neg

    def layer_goodness(self, h: Tensor) -> Tensor:
        """G_l per sample: mean or sum of h² over the flattened state. (B,)."""
        squares = h.flatten(1).pow(2)
        return squares.mean(1) if self.goodness == "mean" else squares.sum(1)

    def goodness_credits(self, pos: Trace, neg: Trace) -> tuple[list[Tensor], list[Tensor]]:
        """a_l^± = ∂L_l/∂h_l^± at each pass's states, in closed form.

        With s = σ: ∂softplus(−(G − θ))/∂h = −σ(−(G − θ))·∂G/∂h and
        ∂softplus(G − θ)/∂h = σ(G − θ)·∂G/∂h, ∂G/∂h = 2h (sum) or 2h/|h| (mean).
        """
        a_pos, a_neg = [], []
        for hp, hn in zip(pos.states, neg.states, strict=True):
            hp, hn = hp.detach(), hn.detach()
            scale = 2 / (math.prod(hp.shape[1:]) if self.goodness == "mean" else 1)
            shape = (-1, *[1] * (hp.dim() - 1))
            # (B,) each; sigmoid per seed: its CPU kernel rounds by position (seed_apart)
            wp = -self.seed_apart(torch.sigmoid, self.threshold - self.layer_goodness(hp))
            wn = self.seed_apart(torch.sigmoid, self.layer_goodness(hn) - self.threshold)
            a_pos.append(wp.view(shape) * scale * hp)  # ∂L_l/∂h_l^+ plays the credit
            a_neg.append(wn.view(shape) * scale * hn)  # ∂L_l/∂h_l^- likewise
        return a_pos, a_neg

    def goodness_losses(self, pos: Trace, neg: Trace) -> Tensor:
        """Σ_l L_l per sample, for logging. (B,)."""
        total = 0
        for hp, hn in zip(pos.states, neg.states, strict=True):
            gp, gn = self.layer_goodness(hp.detach()), self.layer_goodness(hn.detach())
            below, above = self.threshold - gp, gn - self.threshold
            total = total + self.seed_apart(F.softplus, below) + self.seed_apart(F.softplus, above)
        return total

    @override
    def credits(self, trace: Trace, y: Tensor) -> list[Tensor]:
        with torch.no_grad():
            pos, neg = self.passes(trace.states[0], trace.logits, y)
            a_pos, a_neg = self.goodness_credits(pos, neg)
        return [p + n for p, n in zip(a_pos, a_neg, strict=True)]

    @override
    def step_objective(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The readout's cross-entropy on the unlabelled pass, and each labelled pass's local
        update with its own credits (the shared update, once per pass)."""
        trace = self.backbone.trace(x, detach=True)
        losses = F.cross_entropy(trace.logits, y, reduction="none")  # ℓ_i, (N,)
        objective = self.batch_mean(losses)  # reaches only the readout: h_L is detached
        if self.penalty:  # on the block outputs of the network's own (unlabelled) pass
            objective = objective + self.penalty * block_penalty(trace.outputs, self.stack_size)
        pos, neg = self.passes(trace.states[0], trace.logits, y)
        a_pos, a_neg = self.goodness_credits(pos, neg)
        seeds = self.stack_size
        objective = (
            objective + local_objective(pos, a_pos, seeds) + local_objective(neg, a_neg, seeds)
        )
        self.accumulate("train/ff_loss", self.seed_means(self.goodness_losses(pos, neg)))
        return objective, losses
