"""The torch.func fallback: a network of unknown modules stacked, against its lone runs.

The reference is always K lone runs of the same seeds on the same rows (independent code:
the modules' own forward, autograd and the optimizer, one seed at a time); the stack must
match them within the tolerance the fallback documents, not bit for bit.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from torch import Tensor, nn
from typing_extensions import override

from faeval.backbones import Wrapped
from faeval.methods import BP, DFA, LayerFA, StateBridge
from faeval.stacked import NotStackable, seed_state, stack_methods
from faeval.stacked.fallback import FALLBACK_GRAD_TOL, FALLBACK_STATE_TOL, FunctionalStack
from tests.helpers import (
    trained_first_gradients,
    wrap_gated_net,
    wrap_norm_net,
    wrap_plain_resnet,
)

K, B, STEPS = 3, 8, 5
NETS = {
    "gated": wrap_gated_net,  # own parameters and activation, in blocks and readout
    "skip-inside": functools.partial(wrap_plain_resnet, skip_inside=True),  # unknown container
    "batchnorm": wrap_norm_net,  # running statistics updated in place inside the fallback
}
METHODS = {"BP": (BP, {}), "DFA": (DFA, {}), "StateBridge": (StateBridge, {"bridge_width": 8})}


def build(method: str, net, seed: int):
    cls, kwargs = METHODS[method]
    torch.manual_seed(seed)
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    return cls((12,), 4, backbone=net, optimizer=adam, **kwargs).train()


def batches(steps: int = STEPS) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(K * B, 12, generator=gen), torch.randint(0, 4, (K * B,), generator=gen))
        for _ in range(steps)
    ]


def seed_rows(data: list[tuple[Tensor, Tensor]], seed: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[seed * B : (seed + 1) * B], y[seed * B : (seed + 1) * B]) for x, y in data]


def lone_runs(method: str, net, data) -> list[tuple[dict, dict]]:
    """Each seed's first gradients and final state dict, trained alone on its own rows."""
    runs = []
    for seed in range(K):
        lone = build(method, net, seed)
        grads = trained_first_gradients(lone, seed_rows(data, seed))
        runs.append((grads, lone.state_dict()))
    return runs


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("method", list(METHODS))
def test_the_fallback_matches_lone_runs_within_its_documented_tolerance(method, net):
    stacked = stack_methods([build(method, NETS[net], s) for s in range(K)])
    assert any(isinstance(m, FunctionalStack) for m in stacked.backbone.modules())
    data = batches()
    grads = trained_first_gradients(stacked, data)
    state = stacked.state_dict()
    for seed, (lone_grads, lone_state) in enumerate(lone_runs(method, NETS[net], data)):
        assert set(lone_grads) == set(grads)
        for name, g in lone_grads.items():  # after one step
            torch.testing.assert_close(
                grads[name][seed], g, **FALLBACK_GRAD_TOL, msg=lambda m, n=name: f"{n}: {m}"
            )
        for name, value in lone_state.items():  # after five Adam steps, running statistics too
            torch.testing.assert_close(
                state[name][seed], value, **FALLBACK_STATE_TOL, msg=lambda m, n=name: f"{n}: {m}"
            )


def test_another_seeds_lone_run_fails_the_tolerance():
    stacked = stack_methods([build("DFA", wrap_gated_net, s) for s in range(K)])
    data = batches(1)
    grads = trained_first_gradients(stacked, data)
    runs = lone_runs("DFA", wrap_gated_net, data)
    for seed in range(K):
        wrong, _ = runs[(seed + 1) % K]  # the next seed's lone run: the seed order mixed up
        with pytest.raises(AssertionError):
            for name, g in wrong.items():
                torch.testing.assert_close(grads[name][seed], g, **FALLBACK_GRAD_TOL)


def test_stacking_keeps_the_lone_keys_and_each_seeds_tensors_exactly():
    lone = [build("DFA", wrap_norm_net, s) for s in range(K)]
    stacked = stack_methods([build("DFA", wrap_norm_net, s) for s in range(K)])
    # The dry run that checks the fallback's modules put the running statistics back.
    for seed, method in enumerate(lone):
        want = method.state_dict()
        assert list(seed_state(stacked.state_dict(), seed)) == list(want)
        for name, value in seed_state(stacked.state_dict(), seed).items():
            assert torch.equal(value, want[name]), name
    fresh = build("DFA", wrap_norm_net, 99)
    fresh.load_state_dict(seed_state(stacked.state_dict(), 1), strict=True)
    x = torch.randn(B, 12)
    fresh.eval()
    stacked.eval()  # BatchNorm on its running statistics, in the template too
    logits = stacked.backbone(x.repeat(K, 1)).chunk(K)[1]
    torch.testing.assert_close(logits, fresh.backbone(x), **FALLBACK_GRAD_TOL)
    assert not torch.equal(stacked.backbone(x.repeat(K, 1)).chunk(K)[0], logits)


class Centred(nn.Module):
    """Subtracts the batch mean: stacked as one batch, it would mix the seeds' rows."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(h - h.mean(0))


def centred_net(shape, classes) -> Wrapped:
    blocks = [nn.Sequential(nn.Linear(16, 16), Centred()) for _ in range(2)]
    return Wrapped(nn.Linear(shape[0], 16), blocks, nn.Linear(16, classes), shape)


def test_a_module_mixing_the_batch_sees_only_its_own_seeds_rows():
    stacked = stack_methods([build("BP", centred_net, s) for s in range(K)])
    x = torch.randn(K * B, 12)
    logits = stacked.backbone(x)
    for seed in range(K):
        lone = build("BP", centred_net, seed)
        want = lone.backbone(x[seed * B : (seed + 1) * B])
        torch.testing.assert_close(logits.chunk(K)[seed], want, **FALLBACK_GRAD_TOL)
    mixed = Centred()(stacked.backbone.blocks[0][0](stacked.backbone.embed(x)))  # all K·B rows
    separate = stacked.backbone.blocks[0](stacked.backbone.embed(x))
    assert (mixed - separate).abs().max() > 1e-3  # the per-seed mean is what made it match


class Halved(nn.Module):
    """Halves its input in training only: its own forward reads ``self.training``."""

    def forward(self, h: Tensor) -> Tensor:
        return h / 2 if self.training else h


def test_the_fallback_module_runs_in_the_mode_the_stack_is_in():
    def net(shape, classes):
        return Wrapped(nn.Linear(shape[0], 16), [Halved()], nn.Linear(16, classes), shape)

    stacked = stack_methods([build("BP", net, s) for s in range(K)])
    x = torch.randn(K * B, 12)
    for training in (True, False):
        stacked.train(training)
        lone = build("BP", net, 2).train(training)
        want = lone.backbone(x[2 * B :])
        torch.testing.assert_close(stacked.backbone(x).chunk(K)[2], want, **FALLBACK_GRAD_TOL)


def test_the_run_says_once_which_modules_stack_through_the_fallback(caplog):
    with caplog.at_level(logging.WARNING, logger="faeval"):
        stack_methods([build("DFA", wrap_gated_net, s) for s in range(K)])
    notes = [r.getMessage() for r in caplog.records if "torch.func fallback" in r.getMessage()]
    assert len(notes) == 1
    assert "backbone.blocks.0, backbone.blocks.1, backbone.blocks.2, backbone.head.1" in notes[0]
    assert "not bit for bit" in notes[0] and "rtol 1e-05" in notes[0]


def test_a_network_of_known_modules_stacks_without_the_fallback(caplog):
    net = functools.partial(wrap_plain_resnet, skip_inside=False)  # Branch: a Sequential
    with caplog.at_level(logging.WARNING, logger="faeval"):
        stacked = stack_methods([build("DFA", net, s) for s in range(K)])
    assert not any(isinstance(m, FunctionalStack) for m in stacked.modules())
    assert not caplog.records


class Dropped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, h: Tensor) -> Tensor:
        return self.drop(h)


class Branching(nn.Module):
    def forward(self, h: Tensor) -> Tensor:
        return h if h.sum() > 0 else -h


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, h: Tensor) -> Tensor:
        self.seen = self.seen + len(h)  # rebinds: the fallback would drop the new tensor
        return h


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (Dropped, "draws random numbers"),
        (Branching, "branches on a tensor's value"),
        (Counting, "rebinds the buffer 'seen'"),
    ],
)
def test_a_module_the_fallback_cannot_run_is_refused_when_stacked(module, reason):
    def net(shape, classes):
        blocks = [nn.Linear(16, 16), module()]
        return Wrapped(nn.Linear(shape[0], 16), blocks, nn.Linear(16, classes), shape)

    methods = [build("DFA", net, s) for s in range(K)]
    path = rf"backbone\.blocks\.1 \(.*{module.__name__}\) cannot be stacked through the torch"
    with pytest.raises(NotStackable, match=rf"{path}.*{reason}.*--seeds"):
        stack_methods(methods)


def test_layer_wise_feedback_is_refused_on_a_network_with_a_fallback_module():
    def layer_fa(seed):
        torch.manual_seed(seed)
        return LayerFA((12,), 4, backbone=wrap_gated_net)

    with pytest.raises(
        NotStackable, match=r"LayerFA .* backbone\.blocks\.0.*forward_with_feedback"
    ):
        stack_methods([layer_fa(s) for s in range(K)])


class GatedNet(Wrapped):
    """The command line's form of a network of one's own: a ``Wrapped`` subclass's builder."""

    def __init__(self, input_shape, num_classes, width: int = 16) -> None:
        net = wrap_gated_net(input_shape, num_classes, width)
        super().__init__(net.embed, net.blocks, net.head, input_shape)


class OwnReadout(GatedNet):
    def readout(self, h: Tensor) -> Tensor:  # code of its own the methods call apart
        return super().readout(h) * 2


def test_a_wrapped_subclass_is_known_unless_it_adds_code_the_methods_call():
    stacked = stack_methods([build("DFA", GatedNet, s) for s in range(K)])
    assert type(stacked.backbone) is GatedNet  # a container: its blocks stack one by one
    assert isinstance(stacked.backbone.blocks[0], FunctionalStack)
    with pytest.raises(NotStackable, match=r"backbone \(.*OwnReadout\) cannot be.*Wrapped"):
        stack_methods([build("DFA", OwnReadout, s) for s in range(K)])


class ScaledSequential(nn.Sequential):
    """A known container's code, but a parameter of its own (which the twins cannot hold)."""

    def __init__(self, width: int) -> None:
        super().__init__(nn.Linear(width, width))
        self.scale = nn.Parameter(torch.ones(()))


def test_a_known_container_with_a_parameter_of_its_own_stacks_through_the_fallback():
    def net(shape, classes):
        return Wrapped(nn.Linear(shape[0], 16), [ScaledSequential(16)], nn.Linear(16, 4), shape)

    stacked = stack_methods([build("DFA", net, s) for s in range(K)])
    assert isinstance(stacked.backbone.blocks[0], FunctionalStack)
    assert stacked.state_dict()["backbone.blocks.0.scale"].shape == (K,)


class Tallied(nn.Module):
    """Keeps a count in its extra state, which the fallback cannot split by seed."""

    def forward(self, h: Tensor) -> Tensor:
        return h

    @override
    def get_extra_state(self) -> int:
        return 0

    @override
    def set_extra_state(self, state: int) -> None:
        pass


class ExtraHolder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tally = Tallied()

    def forward(self, h: Tensor) -> Tensor:
        return self.tally(h)


def test_a_module_with_extra_state_is_refused_with_its_path():
    def net(shape, classes):
        block = nn.Sequential(nn.Linear(16, 16))
        block.append(ExtraHolder())
        return Wrapped(nn.Linear(shape[0], 16), [block], nn.Linear(16, classes), shape)

    with pytest.raises(
        NotStackable, match=r"blocks\.0\.1 \(.*ExtraHolder\).*its tally keeps extra"
    ):
        stack_methods([build("DFA", net, s) for s in range(K)])
