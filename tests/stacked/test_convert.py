"""Stacking methods: every known method and backbone, exactly per seed; refusals otherwise."""

from __future__ import annotations

import functools
import re
from contextlib import nullcontext
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from lightning.pytorch import Callback
from torch import Tensor, nn

from faeval.backbones import MLP, ResMLP, SmallCNN, StudentNet, ViTMini
from faeval.data import TensorBatches
from faeval.errors import TrainingDiverged
from faeval.methods import (
    BP,
    BRSF,
    DFA,
    DRL,
    DRTP,
    DTP,
    EP,
    FA,
    FF,
    FRSF,
    KP,
    LDRL,
    PC,
    PEPITA,
    TP,
    USF,
    CreditBridge,
    ForwardGradient,
    FrozenBlocks,
    LayerFA,
    LayerFeedbackMethod,
    StateBridge,
    TargetPropagation,
)
from faeval.methods.step_draws import StepDrawMethod
from faeval.stacked import NotStackable, seed_state, stack_methods
from faeval.stacked.convert import check_optimizer
from faeval.stacked.module import SeedStack
from tests.helpers import LinearNet, quiet_trainer

K = 3
BACKBONES = {
    "ResMLP": ((3, 8, 8), functools.partial(ResMLP, d_hidden=16, num_blocks=2)),
    "SmallCNN": ((3, 8, 8), functools.partial(SmallCNN, width=4, num_blocks=2)),
    "ViTMini": ((3, 8, 8), functools.partial(ViTMini, d_model=16, num_blocks=2, num_heads=2)),
    "StudentNet": ((12,), functools.partial(StudentNet, width=16, depth=3)),
    "MLP": ((12,), functools.partial(MLP, width=16, num_blocks=2)),
}
METHODS = {
    "BP": (BP, {}),
    "FA": (FA, {}),
    "DFA": (DFA, {}),
    "DRTP": (DRTP, {}),
    "FrozenBlocks": (FrozenBlocks, {}),
    "StateBridge": (StateBridge, {"bridge_width": 8}),
    "CreditBridge": (CreditBridge, {"value_width": 8, "warmup_epochs": 0}),
    "EP": (EP, {"steps": 6, "tol": 0.05, "check_every": 4}),
    "PC": (PC, {"steps": 4}),
    "PC-forward": (PC, {"steps": 4, "update": "forward"}),
    "PC-fixed": (PC, {"steps": 4, "fixed_predictions": True}),
    "LayerFA": (LayerFA, {}),
    "USF": (USF, {}),
    "FRSF": (FRSF, {}),
    "KP": (KP, {}),
    "BRSF": (BRSF, {}),
    # the target-propagation family: per-step noise drawn per seed, feedback nets stacked
    "TP": (TP, {"feedback_width": 8, "noise_samples": 2}),
    "DTP": (DTP, {"feedback_width": 8, "noise_samples": 2}),
    "DRL": (DRL, {"feedback_width": 8}),
    "LDRL": (LDRL, {"feedback_width": 8, "noise_samples": 2}),
    "ForwardGradient": (ForwardGradient, {}),
    "ForwardGradient-local": (ForwardGradient, {"directions": 3, "local_losses": True}),
    "PEPITA": (PEPITA, {}),
    "PEPITA-forward": (PEPITA, {"update": "forward"}),
    "FF": (FF, {}),
    "FF-hard": (FF, {"negatives": "hard", "goodness": "sum", "penalty": 0.1}),
}


def build(method: str, backbone: str, seed: int, **options):
    cls, kwargs = METHODS[method]
    shape, factory = BACKBONES[backbone]
    torch.manual_seed(seed)
    return cls(shape, 4, backbone=factory, **kwargs, **options).train()


#: Rows per seed of the bit-for-bit test: a vector of one value per sample (FF's goodness
#: weights) has 20 elements alone and K·20 stacked, so a seed's values run partly in a
#: vectorised body and partly in a scalar tail, otherwise alone than stacked, under AVX2 and
#: AVX512 alike (``CreditMethod.seed_apart``; with 6 rows both run scalar code only).
ROWS = 20


def batch(shape, seed: int = 1, rows: int = 6) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    n = K * rows
    return torch.randn(n, *shape, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def step(method, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The step's objective and losses, its gradients taken as ``training_step`` takes them
    (a layer-wise method's backward through its feedback)."""
    training = method.attached() if isinstance(method, LayerFeedbackMethod) else nullcontext()
    with training:
        objective, losses = method.step_objective(x, y)
        objective.backward()
    return objective, losses


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("method", list(METHODS))
def test_a_stacked_step_gives_every_seed_its_lone_gradients_bit_for_bit(method, backbone):
    lone = [build(method, backbone, seed) for seed in range(K)]
    stacked = stack_methods([build(method, backbone, seed) for seed in range(K)])
    assert stacked.stack_size == K and type(stacked) is type(lone[0])
    x, y = batch(BACKBONES[backbone][0], rows=ROWS)
    _, losses = step(stacked, x, y)
    for k, (method_k, xk, yk) in enumerate(zip(lone, x.chunk(K), y.chunk(K), strict=True)):
        _, losses_k = step(method_k, xk, yk)
        assert torch.equal(losses.chunk(K)[k], losses_k)
        params = dict(method_k.named_parameters())
        for name, p in stacked.named_parameters():
            if params[name].grad is None:
                assert p.grad is None, name
            else:
                assert torch.equal(p.grad[k], params[name].grad), name
        buffers = dict(method_k.named_buffers())
        for name, b in stacked.named_buffers():  # BatchNorm's running statistics
            assert torch.equal(b[k], buffers[name]), name


@pytest.mark.parametrize("method", ["ForwardGradient-local", "PEPITA", "FF-hard"])
def test_two_stacked_steps_leave_each_seed_its_lone_runs_state_and_draw_counter(tmp_path, method):
    """Trained by the trainer (the draw counter advances after each step, so the second step
    draws anew), each seed's state is its lone run's and loads strictly into the lone method
    with the seed's own draw seed and count. Every parameter has a multiple of 16 floats, so
    fused Adam rounds the stack as the lone runs (tests/stacked/test_cli.py)."""
    cls, kwargs = METHODS[method]

    def built(seed: int):
        torch.manual_seed(seed)
        return cls((16,), 16, backbone=functools.partial(ResMLP, d_hidden=16), **kwargs)

    def train(module, x: Tensor, y: Tensor, batch_size: int, where: str) -> None:
        batches = TensorBatches(x, y, batch_size=batch_size)
        quiet_trainer(tmp_path / where, max_steps=2).fit(module, batches, batches)

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2 * K * ROWS, 16, generator=gen)
    y = torch.randint(0, 16, (2 * K * ROWS,), generator=gen)
    stack = SeedStack([built(seed) for seed in range(K)])
    train(stack, x, y, K * ROWS, "stack")  # two steps of K·ROWS rows, seed-major
    state = stack.method.state_dict()
    for k in range(K):
        rows = torch.cat([step.chunk(K)[k] for step in torch.arange(len(y)).chunk(2)])
        lone = built(k)
        train(lone, x[rows], y[rows], ROWS, f"seed{k}")  # the seed's rows of each step
        fresh = built(99)
        fresh.load_state_dict(seed_state(state, k), strict=True)
        got = fresh.state_dict()
        for name, value in lone.state_dict().items():
            same = (
                torch.equal(got[name], value) if isinstance(value, Tensor) else got[name] == value
            )
            assert same, (k, name)
        if isinstance(lone, StepDrawMethod):  # the seed's own draw seed and count, in its state
            assert (fresh.draw_seed, fresh.updates) == (lone.draw_seed, lone.updates) == (k, 2)
    if isinstance(stack.method, StepDrawMethod):
        assert stack.method.seed_draws == list(range(K)) and stack.method.updates == 2


def test_ep_stops_each_seed_at_its_own_step_whatever_the_check_interval():
    taken = []
    for check_every in (1, 5):
        lone = [build("EP", "ResMLP", s) for s in range(K)]
        stacked = stack_methods([build("EP", "ResMLP", s) for s in range(K)])
        for m in [*lone, stacked]:
            m.steps, m.tol, m.check_every = 60, 0.2, check_every
        x, y = batch((3, 8, 8))
        trace = stacked.backbone.trace(x).detached()
        credits = stacked.credits(trace, y)
        for k, (m, xk, yk) in enumerate(zip(lone, x.chunk(K), y.chunk(K), strict=True)):
            want = m.credits(m.backbone.trace(xk).detached(), yk)
            assert all(torch.equal(a.chunk(K)[k], b) for a, b in zip(credits, want, strict=True))
            assert stacked.steps_taken[k] == m.steps_taken
        taken.append(stacked.steps_taken)
    assert torch.equal(*taken) and len(set(taken[0].tolist())) > 1  # the seeds stopped apart


def test_pc_keeps_each_seeds_energy_and_names_the_seed_whose_relaxation_diverged():
    lone = [build("PC", "SmallCNN", s) for s in range(K)]
    stacked = stack_methods([build("PC", "SmallCNN", s) for s in range(K)])
    x, y = batch((3, 8, 8))
    stacked.credits(stacked.backbone.trace(x).detached(), y)
    assert stacked.energies.shape == (5, K)  # T + 1 steps, per seed
    for k, (m, xk, yk) in enumerate(zip(lone, x.chunk(K), y.chunk(K), strict=True)):
        m.credits(m.backbone.trace(xk).detached(), yk)
        assert torch.equal(stacked.energies[:, k], m.energies[:, 0])
    x[6:12] = float("inf")  # seed 1's batch only
    with pytest.raises(TrainingDiverged, match=r"\(seeds \[1\] of the stack\)"):
        stacked.credits(stacked.backbone.trace(x).detached(), y)


def test_no_coupling_another_seeds_data_leaves_a_seeds_gradients_bit_identical():
    x, y = batch((3, 8, 8))
    grads = []
    for perturb in (False, True):
        stacked = stack_methods([build("CreditBridge", "SmallCNN", s) for s in range(K)])
        xp, yp = x.clone(), y.clone()
        if perturb:  # seed 1's batch only
            xp[6:12] = torch.randn(6, 3, 8, 8)
            yp[6:12] = (yp[6:12] + 1) % 4
        stacked.step_objective(xp, yp)[0].backward()
        grads.append({n: p.grad for n, p in stacked.named_parameters()})
    for name, g in grads[0].items():
        assert torch.equal(g[[0, 2]], grads[1][name][[0, 2]]), name
        assert not torch.equal(g[1], grads[1][name][1]) or g[1].abs().sum() == 0, name


def test_seed_state_loads_into_the_lone_method_strictly():
    lone = [build("StateBridge", "ViTMini", s) for s in range(K)]
    stacked = stack_methods(lone)
    for k in range(K):
        fresh = build("StateBridge", "ViTMini", 99)
        fresh.load_state_dict(seed_state(stacked.state_dict(), k), strict=True)
        want = lone[k].state_dict()
        assert all(torch.equal(v, want[n]) for n, v in fresh.state_dict().items())


class FeedbackLosses(Callback):
    """Each seed's epoch mean of ``train/feedback_loss`` at every epoch end (a lone run's: one)."""

    def __init__(self) -> None:
        self.values: list[list[float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # before the module clears them
        if isinstance(pl_module, SeedStack):
            means = [pl_module.epoch_means(k) for k in range(pl_module.seeds)]
        else:
            means = [pl_module.epoch_means()]
        self.values.append([m["train/feedback_loss"] for m in means])


def trained(module, x: Tensor, y: Tensor, steps: int, tmp_path) -> list[list[float]]:
    """``steps`` training steps of ``module`` on the batch (x, y) (one batch an epoch), by a
    Lightning trainer: its training_step, optimizer and counters as a run takes them."""
    figures = FeedbackLosses()
    loader = TensorBatches(x, y, batch_size=len(x))  # in order: seed k's rows stay its own
    trainer = quiet_trainer(tmp_path, max_steps=steps, callbacks=[figures])
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)  # no validation run
    return figures.values


@pytest.mark.parametrize(
    ("method", "backbone"),
    [("TP", "SmallCNN"), ("DTP", "ResMLP"), ("DRL", "ViTMini"), ("LDRL", "SmallCNN")],
)
def test_target_propagation_trains_each_seed_its_lone_run_and_its_checkpoint_loads_alone(
    tmp_path, method, backbone
):
    """Two Adam steps of a stack (fresh noise each: the draw counter advances) leave seed k's
    parameters, buffers, noise counter and logged feedback loss those of its lone run's two
    steps; seed k's state loads strictly into the lone method, with its own feedback seed.
    (Adam unfused: a fused optimizer rounds a parameter's scalar tail otherwise than its
    vector body, README "Many seeds in one process", DFA's as much as these methods'.)"""
    adam = functools.partial(torch.optim.Adam, lr=1e-2, fused=False)
    lone = [build(method, backbone, seed, optimizer=adam) for seed in range(K)]
    stack = SeedStack([build(method, backbone, seed, optimizer=adam) for seed in range(K)])
    groups = stack.configure_optimizers().param_groups  # the feedback nets at their own rate
    assert [g["lr"] for g in groups] == [1e-2, lone[0].feedback_lr] and len(groups) == 2
    feedback = {id(p) for p in stack.method.feedback.parameters()}
    assert {id(p) for p in groups[1]["params"]} == feedback
    x, y = batch(BACKBONES[backbone][0])
    figures = trained(stack, x, y, 2, tmp_path / "stack")
    state = stack.method.state_dict()
    assert isinstance(stack.method, TargetPropagation) and stack.method.updates == 2
    for k, (method_k, xk, yk) in enumerate(zip(lone, x.chunk(K), y.chunk(K), strict=True)):
        alone = trained(method_k, xk, yk, 2, tmp_path / f"seed{k}")
        assert [f[k] for f in figures] == [f[0] for f in alone]
        fresh = build(method, backbone, 99)
        fresh.load_state_dict(seed_state(state, k), strict=True)
        assert (fresh.draw_seed, fresh.updates, fresh.seed_draws) == (k, 2, None)
        want = method_k.state_dict()
        for name, value in fresh.state_dict().items():
            if isinstance(value, Tensor):
                assert torch.equal(value, want[name]), name
            else:  # the extra state: the seed's own feedback seed and counter
                assert value == want[name] == {"feedback_seed": k, "updates": 2}, name
        assert any(
            not torch.equal(v, build(method, backbone, k).state_dict()[n])
            for n, v in want.items()
            if n.startswith("feedback.")
        )  # the feedback nets trained


def test_a_method_it_does_not_know_is_refused_with_the_reason():
    class MyDFA(DFA):  # a subclass may change credits or losses: not stackable until checked
        pass

    torch.manual_seed(0)
    methods = [MyDFA((12,), 4, backbone=functools.partial(StudentNet, width=16)) for _ in range(2)]
    with pytest.raises(NotStackable, match=r"MyDFA cannot be stacked over seeds.*--seeds"):
        stack_methods(methods)


def test_a_module_it_cannot_stack_is_refused_with_its_path_and_reason():
    class Noisy(nn.Module):  # draws from the global RNG: a lone run's draws cannot be repeated
        def forward(self, h):
            return h + torch.randn_like(h)

    def backbone(shape, classes):
        net = ResMLP(shape, classes, d_hidden=16, num_blocks=2)
        net.blocks[1].act = Noisy()
        return net

    torch.manual_seed(0)
    methods = [DFA((6,), 3, backbone=backbone) for _ in range(2)]
    with pytest.raises(
        NotStackable, match=r"backbone\.blocks\.1\.act \(.*Noisy\) cannot be .*random.*--seeds"
    ):
        stack_methods(methods)
    torch.manual_seed(0)
    with pytest.raises(NotStackable, match=r"backbone \(tests\.helpers\.LinearNet\) cannot be"):
        stack_methods([DFA((6,), 3, backbone=LinearNet) for _ in range(2)])


def test_an_optimizer_that_is_not_elementwise_is_refused():
    check_optimizer(torch.optim.Adam([nn.Parameter(torch.zeros(2))]))
    with pytest.raises(NotStackable, match="LBFGS cannot be stacked"):
        check_optimizer(torch.optim.LBFGS([nn.Parameter(torch.zeros(2))]))


def stacking_doc_blocks() -> list[str]:
    """The ```python blocks of docs/extending.md's "Stacking seeds", in order."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
    section = text[text.index("### Stacking seeds") : text.index("## A network")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_check_docs_extending_shows_passes_a_stacking_method_and_fails_a_mixing_one():
    declare, check = stacking_doc_blocks()
    scope: dict = {"__name__": "docs"}
    exec(declare, scope)
    assert scope["MyMethod"].stack_refusal is None
    exec(check, scope)  # each seed's stacked gradients are its lone run's

    class Centred(scope["MyMethod"]):  # subtracts its batch mean: mixes the seeds' rows
        stack_refusal: ClassVar[str | None] = None

        def credits(self, trace, y):
            return [c - c.mean(0) for c in super().credits(trace, y)]

    scope["MyMethod"] = Centred
    with pytest.raises(AssertionError, match="backbone"):
        exec(check, scope)
