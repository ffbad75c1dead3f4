"""FF against Forward-Forward worked by hand (Hinton 2022): the labelled passes, each layer's
goodness loss and its gradient, written out here and differentiated by autograd, in float64."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP
from faeval.errors import ConfigError
from faeval.methods import FF
from faeval.seeding import mixed_seed

C = 3


def tiny(**kwargs) -> FF:
    torch.manual_seed(0)
    backbone = partial(ResMLP, d_hidden=6, num_blocks=2, w2_std=0.5)
    return FF((5,), C, backbone=backbone, **kwargs).double()


def wrong_labels(seed: int, updates: int, y: torch.Tensor) -> torch.Tensor:
    """The documented draw: y + U{1..C−1} mod C from the stream (seed, 4, t)."""
    gen = torch.Generator().manual_seed(mixed_seed(seed, 4, updates))
    return (y + torch.randint(1, C, (len(y),), generator=gen)) % C


def ff_by_hand(method: FF, x, y, y_neg, threshold: float, mean: bool):
    """Σ_l mean_i [softplus(θ − G_l⁺) + softplus(G_l⁻ − θ)], each layer's loss reaching only
    its own block (block inputs detached), plus the readout's cross-entropy on the plain pass
    at h_L detached. The label enters as h_0 + (onehot(y) − 1/C)·E."""
    bb, emb = method.backbone, method.label_embedding
    h0 = bb.embed(x)

    def goodness(h):
        return h.pow(2).mean(1) if mean else h.pow(2).sum(1)

    def layer_losses(labels):
        h = h0 + (F.one_hot(labels, C).double() - 1 / C) @ emb
        out = [goodness(h)]
        for block in bb.blocks:
            h = h.detach() + block(h.detach())
            out.append(goodness(h))
        return out

    total = 0
    for gp, gn in zip(layer_losses(y), layer_losses(y_neg), strict=True):
        total = total + (F.softplus(threshold - gp) + F.softplus(gn - threshold)).mean()
    h = h0
    for block in bb.blocks:
        h = h + block(h)
    return total + F.cross_entropy(bb.readout(h.detach()), y)


@pytest.mark.parametrize("goodness", ["mean", "sum"])
def test_the_update_is_the_gradient_of_each_layers_goodness_loss(goodness):
    threshold = 0.7 if goodness == "mean" else 4.0
    method = tiny(threshold=threshold, goodness=goodness)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    y_neg = wrong_labels(method.draw_seed, 0, y)
    assert (y_neg != y).all()
    params = [p for p in method.parameters() if p.requires_grad]
    names = [n for n, p in method.named_parameters() if p.requires_grad]
    want = torch.autograd.grad(
        ff_by_hand(method, x, y, y_neg, threshold, goodness == "mean"), params
    )
    objective, _ = method.step_objective(x, y)
    got = torch.autograd.grad(objective, params)
    assert "label_embedding" in names
    for name, g, w in zip(names, got, want, strict=True):
        assert w.abs().max() > 1e-6, name  # every parameter learns
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14, msg=name)


def test_credits_are_the_goodness_losses_gradients_at_each_passs_states():
    method = tiny(threshold=0.5)
    bb, emb = method.backbone, method.label_embedding.detach()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.tensor([2, 0, 1, 1])
    y_neg = wrong_labels(method.draw_seed, 0, y)
    credits = method.credits(bb.trace(x).detached(), y)
    with torch.no_grad():
        h0 = bb.embed(x)
    per_pass = []
    for labels, sign in [(y, -1), (y_neg, 1)]:
        h = h0 + (F.one_hot(labels, C).double() - 1 / C) @ emb
        states = [h]
        for block in bb.blocks:
            states.append(states[-1] + block(states[-1]))
        states = [s.detach().requires_grad_(True) for s in states]
        # Σ_i softplus(±(G_i − θ)): per-sample rows, the scale of ℓ_i
        loss = sum(F.softplus(sign * (s.pow(2).mean(1) - 0.5)).sum() for s in states)
        per_pass.append(torch.autograd.grad(loss, states))
    for layer, (a, gp, gn) in enumerate(zip(credits, *per_pass, strict=True)):
        torch.testing.assert_close(a, gp + gn, rtol=1e-10, atol=1e-14, msg=f"layer {layer}")


def test_the_unlabelled_pass_is_the_networks_own_and_negatives_are_never_the_label():
    method = tiny(negatives="hard")
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.randint(0, C, (64,))
    # the neutral label (1/C each) adds nothing: h_0 itself
    h0 = method.backbone.embed(x)
    neutral = torch.full((64,), 0)
    centred = (F.one_hot(neutral, C).double() - 1 / C) @ method.label_embedding
    assert not torch.allclose(method.labelled(h0, neutral), h0)
    torch.testing.assert_close(method.labelled(h0, neutral), h0 + centred)
    # a confident wrong prediction is the hard negative; the label never is
    logits = torch.full((64, C), -30.0, dtype=torch.float64)
    logits[torch.arange(64), (y + 1) % C] = 30.0
    assert torch.equal(method.negative_labels(logits, y), (y + 1) % C)
    logits = torch.zeros(64, C, dtype=torch.float64)
    logits[torch.arange(64), y] = 50.0  # all mass on the label: uniform over the wrong ones
    neg = method.negative_labels(logits, y)
    assert (neg != y).all() and len(set(((neg - y) % C).tolist())) == C - 1


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="goodness is 'mean' or 'sum'"):
        tiny(goodness="max")
    with pytest.raises(ConfigError, match="label_scale >= 0"):
        tiny(label_scale=-1.0)
