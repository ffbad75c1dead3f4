"""The method contract: every method the CLI knows, on every backbone (and each of its
topologies): one step runs, the loss is finite, parameters changed, feedback state did not,
and every layer is measured; BP's credits are autograd's gradients on every backbone.

Methods are collected from ``faeval.methods.__all__`` at test time, so a method added there
is covered without editing this file.
"""

from __future__ import annotations

import copy
import inspect
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import faeval.methods
from faeval.backbones import MLP, ResMLP, SmallCNN, StudentNet, ViTMini
from faeval.data import TensorBatches
from faeval.diagnostics import measure_layers
from faeval.methods import (
    BP,
    DFA,
    DRTP,
    EP,
    FA,
    FF,
    PC,
    PEPITA,
    CreditBridge,
    CreditMethod,
    ForwardGradient,
    LayerFeedbackMethod,
    StateBridge,
    TargetPropagation,
)
from tests.helpers import GradRecorder, reference_states, wrap_plain_resnet

#: Tiny configurations of each backbone (and of each of its topologies), with input shapes.
BACKBONES = {
    "ResMLP": ((12,), partial(ResMLP, d_hidden=16, num_blocks=2, w2_std=0.3)),
    "ResMLP-no-residual-no-ln": (
        (12,),
        partial(ResMLP, d_hidden=16, num_blocks=2, residual_add=False, terminal_ln=False),
    ),
    "ViTMini-mean": (
        (3, 16, 16),
        partial(ViTMini, patch_size=4, d_model=16, num_blocks=2, num_heads=2, mlp_ratio=2),
    ),
    "ViTMini-cls": (
        (3, 16, 16),
        partial(
            ViTMini, patch_size=8, d_model=16, num_blocks=2, num_heads=2, mlp_ratio=2, pool="cls"
        ),
    ),
    "SmallCNN-downsample": ((3, 16, 16), partial(SmallCNN, width=4, num_blocks=2)),
    "SmallCNN-residual": (
        (3, 16, 16),
        partial(SmallCNN, width=4, num_blocks=2, downsample=False, residual_add=True),
    ),
    "StudentNet": ((12,), partial(StudentNet, width=16, depth=3, alpha=1.0)),
    "MLP": ((12,), partial(MLP, width=16, num_blocks=2)),
    # A researcher's own residual network, wrapped (faeval.backbones.Wrapped), in both forms.
    "Wrapped-branches": ((12,), partial(wrap_plain_resnet)),
    "Wrapped-skip-inside": ((12,), partial(wrap_plain_resnet, skip_inside=True)),
}
NUM_CLASSES = 4


def credit_methods() -> list[type[CreditMethod]]:
    """The concrete ``CreditMethod`` classes ``faeval.methods`` exports."""
    found = [getattr(faeval.methods, name) for name in faeval.methods.__all__]
    return [
        cls
        for cls in found
        if inspect.isclass(cls)
        and issubclass(cls, CreditMethod)
        and cls is not CreditMethod
        and not inspect.isabstract(cls)
    ]


def batch(input_shape: tuple[int, ...], n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, *input_shape, generator=gen),
        torch.randint(NUM_CLASSES, (n,), generator=gen),
    )


def build(cls, name):
    input_shape, factory = BACKBONES[name]
    return cls(input_shape, NUM_CLASSES, backbone=factory)


def test_every_exported_method_is_collected():
    names = {cls.__name__ for cls in credit_methods()}
    assert {"BP", "FA", "DFA", "FrozenBlocks"} <= names
    assert {"LayerFA", "USF", "BRSF", "FRSF", "KP", "DRTP", "PC"} <= names  # the second round


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("cls", credit_methods(), ids=lambda c: c.__name__)
def test_one_step_trains_keeps_feedback_and_measures_every_layer(quiet_trainer, cls, name):
    try:
        method = build(cls, name)
    except ValueError as err:  # a method may refuse a backbone, at construction, saying why
        assert BACKBONES[name][1].func.__name__ in str(err), f"refusal must name it: {err}"
        return
    x, y = batch(BACKBONES[name][0])
    trained = {
        n: p.detach().clone() for n, p in method.backbone.named_parameters() if p.requires_grad
    }
    frozen = {n: p.detach().clone() for n, p in method.named_parameters() if not p.requires_grad}
    feedback = {n: b.clone() for n, b in method.named_buffers() if not n.startswith("backbone.")}

    trainer = quiet_trainer(max_steps=1)
    loader = TensorBatches(x, y, batch_size=len(x))
    trainer.fit(method, train_dataloaders=loader, val_dataloaders=loader)

    assert trainer.global_step == 1
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    unchanged = [
        n
        for n, p in method.backbone.named_parameters()
        if n in trained and torch.equal(p, trained[n])
    ]
    assert not unchanged, f"{cls.__name__} left backbone parameters untouched: {unchanged}"
    for n, p in method.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen parameter {n} changed"
    for n, b in method.named_buffers():
        if n in feedback:
            assert torch.equal(b, feedback[n]), f"feedback buffer {n} changed"

    figures = measure_layers(method, x, y)
    layers = method.backbone.num_blocks + 1
    assert len(figures.h_norm) == len(figures.g_norm) == len(figures.cos) == layers
    assert all(math.isfinite(v) and v > 0 for v in figures.h_norm + figures.g_norm)
    assert all(math.isfinite(c) and abs(c) <= 1 + 1e-9 for c in figures.cos)


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", BACKBONES)
def test_bp_credits_equal_autograd_gradients(name, train_mode):
    method = build(BP, name).double().train(train_mode)
    backbone = method.backbone
    x, y = batch(BACKBONES[name][0], n=12)
    x = x.double()

    # Reference: the network run by hand, its states retaining their gradients.
    h = backbone.embed(x)
    states = [h]
    for block in backbone.blocks:
        h = h + block(h) if backbone.residual_add else block(h)
        states.append(h)
    for s in states:
        s.retain_grad()
    F.cross_entropy(backbone.readout(h), y, reduction="sum").backward()  # Σ_i ℓ_i: per-sample

    credits = method.credits(backbone.trace(x).detached(), y)
    assert len(credits) == len(states)
    for layer, (a, s) in enumerate(zip(credits, states, strict=True)):
        assert a.shape == s.shape
        torch.testing.assert_close(
            a, s.grad, rtol=1e-9, atol=1e-12 * s.grad.abs().max().item(), msg=f"layer {layer}"
        )


@pytest.mark.parametrize("cls", credit_methods(), ids=lambda c: c.__name__)
def test_a_float64_model_trains_a_step_in_float64(quiet_trainer, cls):
    """A model moved with ``.to(torch.float64)`` trains as it is: every tensor of the step
    (gradients, feedback matrices, helpers) follows it, and the diagnostics measure it."""
    method = build(cls, "ResMLP").to(torch.float64)
    x, y = batch(BACKBONES["ResMLP"][0])
    x = x.double()
    before = {n: p.detach().clone() for n, p in method.backbone.named_parameters()}
    recorder = GradRecorder()
    trainer = quiet_trainer(max_steps=1, callbacks=[recorder])
    loader = TensorBatches(x, y, batch_size=len(x))
    trainer.fit(method, train_dataloaders=loader, val_dataloaders=loader)

    assert trainer.global_step == 1
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    floats = [t for t in [*method.parameters(), *method.buffers()] if t.is_floating_point()]
    assert {t.dtype for t in [*floats, *recorder.grads[0].values()]} == {torch.float64}
    assert any(not torch.equal(p, before[n]) for n, p in method.backbone.named_parameters())
    figures = measure_layers(method, x.float(), y)  # a float32 probe, as a data module gives
    assert all(math.isfinite(c) for c in figures.cos + figures.g_norm)


#: The network of the float64 test: ResMLP with near-identity blocks (w2_std 0.01), on which
#: EP's relaxation settles within 100 steps of 0.5.
FLOAT64_BACKBONE = partial(ResMLP, d_hidden=16, num_blocks=2)
#: Settings under which a method's top credit a_L has a closed form (the rest use defaults):
#: PC with fixed predictions at γ = 1 and T = L + 1 gives backprop's gradient exactly; EP's
#: symmetric error credit gives it up to O(β²) and the relaxation's residue (float64 resolves
#: β = 1e-3: ε_L ~ β·g_L; float32 would keep ~3 digits of it).
FLOAT64_SETTINGS = {
    PC: dict(fixed_predictions=True, step_size=1.0, steps=3),
    EP: dict(beta=1e-3, symmetric=True, steps=100, step_size=0.5, tol=0.0),
}


def top_credit_grad(method, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """e = ∂ℓ_i/∂logits and g_L = ∂ℓ_i/∂h_L by autograd over the tests' own forward."""
    states, logits = reference_states(method.backbone, x)
    logits.retain_grad()
    F.cross_entropy(logits, y, reduction="sum").backward()
    return logits.grad, states[-1].grad


def top_credit_reference(method, x, y) -> tuple[torch.Tensor, float]:
    """a_L computed here in float64, without the method's code, and the relative error allowed.

    e = ∂ℓ_i/∂logits and g_L = ∂ℓ_i/∂h_L come from autograd over a forward written out in
    the tests; the feedback matrices are read from the method's state.
    """
    backbone = method.backbone
    states, logits = reference_states(backbone, x)
    logits.retain_grad()
    F.cross_entropy(logits, y, reduction="sum").backward()
    e, g = logits.grad, states[-1].grad  # (B, C), (B, d)
    top = len(states) - 1
    if isinstance(method, (BP, StateBridge, PC)):  # FrozenBlocks is a BP; PC as set above
        return g, 1e-10
    if isinstance(method, EP):
        return g, 1e-4
    if isinstance(method, FA):
        return e @ method.feedback[0], 1e-10  # (B, C) @ (C, d)
    if isinstance(method, (DFA, CreditBridge)):  # CreditBridge is DFA while warming up
        return e @ method.feedback[top], 1e-10
    if isinstance(method, DRTP):
        return -F.one_hot(y, NUM_CLASSES).double() @ method.feedback[top], 1e-10
    if isinstance(method, LayerFeedbackMethod):
        # The readout head(LN(h_L)) with the head's weight W replaced by its feedback B: a
        # linear layer's input gradient is grad·W, so this network's VJP of e is a_L.
        name, _, feedback = method.feedback_pairs()[-1]
        assert name == "head", name
        swapped = copy.deepcopy(backbone)
        swapped.head.weight.data.copy_(feedback)
        h = states[-1].detach().requires_grad_(True)
        (a,) = torch.autograd.grad(swapped.readout(h), h, e)
        return a, 1e-10
    if isinstance(method, TargetPropagation):  # ĥ_L = h_L − η·g_L: a_L = (h_L − ĥ_L)/η = g_L
        return g, 1e-8
    if isinstance(method, PEPITA):  # h_L − h_L^mod, the second pass on x + e·F
        modulated, _ = reference_states(backbone, x + (e @ method.feedback[0]).view_as(x))
        return states[-1].detach() - modulated[-1].detach(), 1e-10
    raise AssertionError(f"{type(method).__name__} has no float64 reference here: add one")


#: Methods whose top credit is a random draw or a goodness gradient with no short closed form:
#: the float64 test checks what must hold of it instead (NO_CLOSED_FORM's checks).
NO_CLOSED_FORM = (ForwardGradient, FF)


@pytest.mark.parametrize("cls", credit_methods(), ids=lambda c: c.__name__)
def test_a_step_at_64_true_then_the_top_credit_against_float64_autograd(quiet_trainer, cls):
    """Lightning's 64-true moves the model to float64: one step trains, and the credit the
    method then gives is float64 and matches its closed form to float64's precision (float32
    would leave ~1e-7 of it)."""
    settings = FLOAT64_SETTINGS.get(cls, {})
    method = cls((12,), NUM_CLASSES, backbone=FLOAT64_BACKBONE, **settings)
    x, y = batch((12,))
    trainer = quiet_trainer(max_steps=1, precision="64-true")
    loader = TensorBatches(x, y, batch_size=len(x))
    trainer.fit(method, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 1
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())

    x = x.double()
    a = method.credits(method.backbone.trace(x).detached(), y)[-1]
    assert a.dtype == torch.float64 and torch.isfinite(a).all()
    if isinstance(method, NO_CLOSED_FORM):
        if isinstance(method, ForwardGradient):  # a = mean_k (g·v_k) v_k: a·g = mean (g·v_k)² ≥ 0
            _, g = top_credit_grad(method, x, y)
            assert ((a * g).sum(1) >= -1e-12 * a.norm(dim=1) * g.norm(dim=1)).all()
        return
    want, allowed = top_credit_reference(method, x, y)
    error = ((a - want).norm() / want.norm()).item()
    assert error < allowed, (cls.__name__, error)


@pytest.mark.parametrize("cls", credit_methods(), ids=lambda c: c.__name__)
def test_bf16_true_trains_a_bf16_model_and_the_diagnostics_measure_it(quiet_trainer, cls):
    """Lightning's bf16-true moves the model to bf16: the step runs in bf16 throughout (FA's
    and DFA's output error meets bf16 feedback), and the diagnostics cast it up to float32."""
    method = build(cls, "ResMLP")
    x, y = batch(BACKBONES["ResMLP"][0])
    before = {n: p.detach().float() for n, p in method.backbone.named_parameters()}
    recorder = GradRecorder()
    trainer = quiet_trainer(max_steps=1, callbacks=[recorder], precision="bf16-true")
    loader = TensorBatches(x, y, batch_size=len(x))
    trainer.fit(method, train_dataloaders=loader, val_dataloaders=loader)

    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    floats = [t for t in [*method.parameters(), *method.buffers()] if t.is_floating_point()]
    assert {t.dtype for t in [*floats, *recorder.grads[0].values()]} == {torch.bfloat16}
    assert any(not torch.equal(p.float(), before[n]) for n, p in method.backbone.named_parameters())
    figures = measure_layers(method, x, y)
    assert all(math.isfinite(c) for c in figures.cos + figures.g_norm)
    assert next(method.parameters()).dtype == torch.bfloat16  # cast back after measuring


@pytest.mark.parametrize("cls", [FA, DFA], ids=lambda c: c.__name__)
def test_bf16_mixed_trains_a_step_near_the_float64_step(quiet_trainer, cls):
    """Under bf16 autocast the feedback product runs in bf16; the step's gradients stay
    within bf16's precision of the same step taken in float64 (cosine > 0.99 per tensor)."""
    x, y = batch(BACKBONES["ResMLP"][0], n=64)
    grads = {}
    for precision in ("bf16-mixed", "64-true"):
        torch.manual_seed(0)
        method = build(cls, "ResMLP")
        recorder = GradRecorder()
        trainer = quiet_trainer(max_steps=1, callbacks=[recorder], precision=precision)
        loader = TensorBatches(x, y, batch_size=len(x))
        trainer.fit(method, train_dataloaders=loader, val_dataloaders=loader)
        assert math.isfinite(trainer.callback_metrics["train/loss"].item())
        grads[precision] = recorder.grads[0]
    assert grads["bf16-mixed"].keys() == grads["64-true"].keys()
    for name, g in grads["bf16-mixed"].items():
        assert g.dtype == torch.float32, name  # the parameters stay float32 under autocast
        want = grads["64-true"][name]
        cos = F.cosine_similarity(g.double().flatten(), want.flatten(), dim=0).item()
        assert 0.99 < cos <= 1 + 1e-9, (name, cos)
        assert not torch.equal(g.double(), want), name  # it did run in bf16
