"""PC: fixed predictions against backprop, T = 0 and T = 1, the energy's descent, and both
updates (the energy's gradient at the relaxed states, the shared one at the forward pass)
against the energy written out here."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from faeval.backbones import ResMLP, SmallCNN
from faeval.data import TensorBatches
from faeval.diagnostics import sample_cosines, sample_norms, true_gradients
from faeval.errors import ConfigError, TrainingDiverged
from faeval.methods import PC
from faeval.methods.pc import energy_terms, state_gradient
from tests.helpers import EpochMetric, GradRecorder, quiet_trainer, reference_states, sgd

BACKBONE = partial(ResMLP, d_hidden=16, num_blocks=4, w2_std=0.3)
CNN = partial(SmallCNN, width=4, num_blocks=2, downsample=False)


def per_sample_gradients(backbone, x, y):
    """∂ℓ_i/∂h_l by autograd over a forward written out here, and the detached trace."""
    states, logits = reference_states(backbone, x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    return [s.grad for s in states], backbone.trace(x).detached()


def make(backbone=BACKBONE, input_shape=(12,), **kwargs) -> PC:
    torch.manual_seed(0)
    return PC(input_shape, 4, backbone=backbone, **kwargs).double()


def data(input_shape=(12,), n=16):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, *input_shape, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 4, (n,), generator=gen)


@pytest.mark.parametrize(("backbone", "input_shape"), [(BACKBONE, (12,)), (CNN, (3, 8, 8))])
def test_fixed_predictions_at_unit_step_give_backprops_gradients(backbone, input_shape):
    L = 4 if backbone is BACKBONE else 2
    method = make(backbone, input_shape, fixed_predictions=True, step_size=1.0, steps=L + 1)
    method.train()  # BatchNorm on batch statistics, as in a training step
    x, y = data(input_shape)
    grads, trace = per_sample_gradients(method.backbone, x, y)
    for l, (a, g) in enumerate(zip(method.credits(trace, y), grads, strict=True)):
        torch.testing.assert_close(a, g, rtol=1e-10, atol=1e-14, msg=f"layer {l}")


def test_fixed_predictions_give_backprop_times_a_binomial_tail():
    """a_l = P(Bin(T, γ) ≥ L − l + 1)·∂ℓ_i/∂h_l: the closed form of the linear recursion."""
    steps, gamma, L = 7, 0.3, 4
    method = make(fixed_predictions=True, step_size=gamma, steps=steps)
    x, y = data()
    grads, trace = per_sample_gradients(method.backbone, x, y)
    for l, (a, g) in enumerate(zip(method.credits(trace, y), grads, strict=True)):
        k = L - l + 1
        tail = sum(math.comb(steps, j) * gamma**j * (1 - gamma) ** (steps - j)
                   for j in range(k, steps + 1))  # fmt: skip
        torch.testing.assert_close(a, tail * g, rtol=1e-10, atol=1e-14, msg=f"layer {l}")


def test_no_relaxation_leaves_the_output_error_alone_to_train(tmp_path):
    torch.manual_seed(0)
    method = PC((12,), 4, backbone=BACKBONE, steps=0, optimizer=sgd(0.1))
    x, y = data()
    x = x.float()
    trace = method.backbone.trace(x).detached()
    assert all(torch.equal(a, torch.zeros_like(a)) for a in method.credits(trace, y))
    before = {n: p.detach().clone() for n, p in method.backbone.named_parameters()}
    loader = TensorBatches(x, y, batch_size=len(x))
    quiet_trainer(tmp_path, max_steps=1).fit(
        method, train_dataloaders=loader, val_dataloaders=loader
    )
    changed = {n for n, p in method.backbone.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"out_ln.weight", "out_ln.bias", "head.weight", "head.bias"}


def test_one_step_brings_the_output_error_to_the_top_state_only():
    method = make(steps=1, step_size=0.2)
    x, y = data()
    grads, trace = per_sample_gradients(method.backbone, x, y)
    credits = method.credits(trace, y)
    torch.testing.assert_close(credits[-1], 0.2 * grads[-1], rtol=1e-10, atol=1e-14)
    assert all(torch.equal(a, torch.zeros_like(a)) for a in credits[:-1])


@pytest.mark.parametrize(
    ("backbone", "input_shape"),
    [(partial(ResMLP, d_hidden=16, num_blocks=4), (12,)), (BACKBONE, (12,)), (CNN, (3, 8, 8))],
    ids=["resmlp-init", "resmlp-large-blocks", "cnn"],
)
def test_relaxation_lowers_the_energy_monotonically_at_the_default_step(backbone, input_shape):
    torch.manual_seed(0)
    method = PC(input_shape, 4, backbone=backbone, steps=100).train()  # default γ
    x, y = (t.float() if t.is_floating_point() else t for t in data(input_shape, n=32))
    trace = method.backbone.trace(x).detached()  # the forward pass updates BatchNorm's stats
    buffers = {n: b.clone() for n, b in method.backbone.named_buffers()}
    method.credits(trace, y)  # the relaxation does not
    energies = method.energies
    assert len(energies) == 101
    assert (energies[1:] <= energies[:-1]).all(), energies.diff().max()
    assert energies[-1] < energies[0]  # and it does fall
    assert all(torch.equal(b, buffers[n]) for n, b in method.backbone.named_buffers())
    assert all(p.grad is None for p in method.parameters())


def test_a_divergent_relaxation_raises():
    method = make(steps=50, step_size=5.0).float()
    x, y = data()
    x = x.float()
    with pytest.raises(TrainingDiverged, match=r"lower --model\.step_size"):
        method.credits(method.backbone.trace(x).detached(), y)


def test_training_logs_the_final_energy(tiny_ladder, quiet_trainer):
    method = PC(tiny_ladder.input_shape, 4, backbone=partial(ResMLP, d_hidden=16, num_blocks=2))
    energy = EpochMetric("train/pc_energy")
    quiet_trainer(max_epochs=2, callbacks=[energy]).fit(method, datamodule=tiny_ladder)
    assert len(energy.values) == 2 and all(0 < v < 2 for v in energy.values)


def test_invalid_settings_raise():
    with pytest.raises(ConfigError, match="step_size > 0"):
        PC((12,), 4, step_size=0.0)


def test_a_confident_samples_credit_survives_float32():
    """Nudges far below the states' rounding step: relaxing displacements keeps them."""
    torch.manual_seed(0)
    method = PC((12,), 4, backbone=partial(ResMLP, d_hidden=16, num_blocks=4))
    x = torch.randn(64, 12)
    with torch.no_grad():
        method.backbone.head.weight.mul_(20)  # logits far apart: losses down to ~1e-7
        y = method.backbone(x).argmax(1)
    trace, grads = true_gradients(method.backbone, method.backbone.embed(x), y)
    assert (grads[-1].flatten(1).abs().max(1).values < 1e-9).any()  # per entry, under ulp(h)
    for a, g in zip(method.credits(trace, y), grads, strict=True):
        assert (sample_norms(a) > 0).all()  # not one credit rounded to exactly 0
        assert sample_cosines(a, g).min() > 0.3


def hand_energy(backbone, x, y, states):
    """Σ_i F_i = Σ_i [½‖h_0 − embed(x)‖² + Σ_l ½‖h_l − h_{l-1} − F_l(h_{l-1})‖² + ℓ_i(h_L)]."""
    errors = [states[0] - backbone.embed(x)]
    for block, h_prev, h in zip(backbone.blocks, states[:-1], states[1:], strict=True):
        errors.append(h - (h_prev + block(h_prev) if backbone.residual_add else block(h_prev)))
    loss = F.cross_entropy(backbone.readout(states[-1]), y, reduction="sum")
    return sum(e.pow(2).sum() for e in errors) / 2 + loss, errors


def hand_relaxation(backbone, x, y, steps, gamma):
    """h* after T steps h ← h − γ·∇_h F from the forward pass, by autograd on ``hand_energy``."""
    states = [h.detach() for h in reference_states(backbone, x)[0]]
    for _ in range(steps):
        states = [h.requires_grad_(True) for h in states]
        grads = torch.autograd.grad(hand_energy(backbone, x, y, states)[0], states)
        states = [(h - gamma * g).detach() for h, g in zip(states, grads, strict=True)]
    return states


@pytest.mark.parametrize("start", [0, 2], ids=["every-state", "below-h2-at-rest"])
@pytest.mark.parametrize(
    ("backbone", "input_shape"),
    [(BACKBONE, (12,)), (partial(BACKBONE, residual_add=False), (12,)), (CNN, (3, 8, 8))],
    ids=["resmlp", "resmlp-no-residual", "cnn"],
)
def test_the_state_gradient_is_autograds_on_the_energy(backbone, input_shape, start):
    """∇_h Σ_i F_i by one vector-Jacobian product through the blocks, at states off the
    forward pass, against autograd on ``hand_energy``, and F's value there; with h_0..h_s at
    the forward pass, the blocks below h_s left out (``start``), as every block recomputed."""
    method = make(backbone, input_shape).train()
    x, y = data(input_shape)
    forward = [h.detach() for h in reference_states(method.backbone, x)[0]]
    gen = torch.Generator().manual_seed(2)
    shifts = [0.1 * torch.randn(h.shape, generator=gen, dtype=h.dtype) for h in forward]
    if start:  # δ_0..δ_s = 0
        shifts[: start + 1] = [torch.zeros_like(h) for h in forward[: start + 1]]
    states = [(h + d).requires_grad_(True) for h, d in zip(forward, shifts, strict=True)]
    energy, _ = hand_energy(method.backbone, x, y, states)
    expected = torch.autograd.grad(energy, states)
    terms = energy_terms(method.backbone, forward, shifts, y, at_states=True, start=start)
    assert len(terms.outputs) == len(forward) - 1 - start
    torch.testing.assert_close(terms.energies, energy.detach().reshape(1), rtol=1e-12, atol=0)
    for l, (g, e) in enumerate(zip(state_gradient(terms), expected[start:], strict=True)):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-14, msg=f"layer {start + l}")
    assert all(torch.equal(e, torch.zeros_like(e)) for e in expected[:start])


def trained_gradients(tmp_path, method, x, y):
    """Every parameter's gradient in one training step of ``method`` on the batch (x, y)."""
    recorder = GradRecorder()
    loader = TensorBatches(x, y, batch_size=len(x))
    quiet_trainer(tmp_path, max_steps=1, callbacks=[recorder]).fit(
        method, train_dataloaders=loader, val_dataloaders=loader
    )
    return recorder.grads[0]


def parameter_gradients(backbone, objective):
    """∂objective/∂θ for every parameter of the backbone, by name."""
    named = dict(backbone.named_parameters())
    grads = torch.autograd.grad(objective, list(named.values()), allow_unused=True)
    return {f"backbone.{n}": g for n, g in zip(named, grads, strict=True)}


def assert_same_gradients(got, expected):
    assert set(got) == set(expected)  # every parameter, readout included, has a gradient
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-13, msg=name)


RELAXING = [(BACKBONE, (12,)), (partial(CNN, residual_add=True), (3, 8, 8))]


@pytest.mark.parametrize(("backbone", "input_shape"), RELAXING, ids=["resmlp", "cnn"])
def test_the_relaxed_update_is_the_energys_gradient_at_the_relaxed_states(
    tmp_path, backbone, input_shape
):
    """Every parameter's gradient is ∂/∂θ of the batch mean of F at h* (h* held fixed)."""
    method = make(backbone, input_shape, steps=6, step_size=0.2, optimizer=sgd(0.0))
    x, y = data(input_shape)
    reference = make(backbone, input_shape)  # the same initial weights (seed 0)
    reference.train()
    states = hand_relaxation(reference.backbone, x, y, steps=6, gamma=0.2)
    energy, errors = hand_energy(reference.backbone, x, y, states)
    assert all(e.abs().max() > 1e-6 for e in errors)  # the error has reached every layer
    expected = parameter_gradients(reference.backbone, energy / len(y))  # mean F over the batch
    assert_same_gradients(trained_gradients(tmp_path, method, x, y), expected)


def test_the_forward_update_is_the_shared_update_with_the_relaxed_errors(tmp_path):
    """⟨embed(x), −ε_0⟩ + Σ_l ⟨F_l(h_{l-1}), −ε_l⟩ at the forward pass, and ℓ̄ at h_L."""
    method = make(steps=6, step_size=0.2, update="forward", optimizer=sgd(0.0))
    x, y = data()
    backbone = make().train().backbone
    relaxed = hand_relaxation(backbone, x, y, steps=6, gamma=0.2)
    credits = [-e.detach() for e in hand_energy(backbone, x, y, relaxed)[1]]  # −ε_l at h*
    states, _ = reference_states(backbone, x)
    local = (states[0] * credits[0]).sum() + sum(
        (block(h.detach()) * a).sum()
        for block, h, a in zip(backbone.blocks, states[:-1], credits[1:], strict=True)
    )
    readout = F.cross_entropy(backbone.readout(states[-1].detach()), y)
    expected = parameter_gradients(backbone, readout + local / len(y))
    assert_same_gradients(trained_gradients(tmp_path, method, x, y), expected)


def test_the_two_updates_differ_where_the_states_enter(tmp_path):
    x, y = data()
    relaxed, forward = (
        trained_gradients(tmp_path, make(steps=6, step_size=0.2, update=u, optimizer=sgd()), x, y)
        for u in ("relaxed", "forward")
    )
    assert relaxed.keys() == forward.keys()
    for name in relaxed:
        # embed(x) does not depend on the states; a block's last bias gets −ε_l whatever h_{l-1}
        if name.startswith("backbone.embed.") or name.endswith(".w2.bias"):
            torch.testing.assert_close(relaxed[name], forward[name], rtol=1e-12, atol=0)
        else:  # by far the most where the states moved most: the top block, the readout
            top = name.startswith(("backbone.blocks.3.", "backbone.out_ln.", "backbone.head."))
            change = (relaxed[name] - forward[name]).norm() / forward[name].norm()
            assert change > (1e-2 if top else 1e-4), name


def test_with_fixed_predictions_both_updates_are_the_forward_one(tmp_path):
    x, y = data()
    relaxed, forward = (
        trained_gradients(
            tmp_path,
            make(steps=5, step_size=1.0, fixed_predictions=True, update=u, optimizer=sgd()),
            x,
            y,
        )
        for u in ("relaxed", "forward")
    )
    assert relaxed.keys() == forward.keys()
    assert all(torch.equal(relaxed[n], forward[n]) for n in relaxed)


def test_an_unknown_update_raises():
    with pytest.raises(ConfigError, match="'relaxed' or 'forward'"):
        PC((12,), 4, update="backward")
