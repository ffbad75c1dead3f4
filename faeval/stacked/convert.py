"""Stacking K single-seed methods into one, and reading one seed back out.

``stack_methods`` takes K methods built exactly as K lone runs build them (each from its
own seed: weights, feedback draw, helper nets) and returns one method of the same class
whose parameters and buffers hold the K seeds' stacked as (K, *shape), set to train on
seed-major batches of K·B rows (``CreditMethod.stack_size``). ``seed_state`` reads seed k's
state back as an ordinary state dict, which loads into the single-seed method.

Only what was checked to treat every seed apart is stacked; anything else is refused with
the reason, never run: a method whose class does not declare that it stacks
(``CreditMethod.stack_refusal``, read from the class itself: a subclass that says nothing
does not stack), a module whose parameters the stacking does not know, a module whose own
code might mix samples of the batch, an optimizer that is not elementwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from faeval.backbones.cnn import ConvBlock, SmallCNN
from faeval.backbones.resmlp import ResMLP, ResMLPBlock
from faeval.backbones.student import LadderBlock, StudentNet
from faeval.backbones.vit import PatchEmbed, SelfAttention, TransformerBlock, ViTMini
from faeval.errors import ConfigError
from faeval.methods import CreditMethod
from faeval.methods.common import FeedbackMatrices
from faeval.methods.state_bridge import Bridge
from faeval.stacked.modules import (
    StackedBatchNorm2d,
    StackedConv2d,
    StackedFeedbackMatrices,
    StackedLayerNorm,
    StackedLinear,
    StackedPatchEmbed,
    stacked_buffer,
    stacked_parameter,
    stacked_parameter_list,
)

#: Modules that own state, and the stacked module that replaces K of them.
STACKED: dict[type[nn.Module], Callable[[list], nn.Module]] = {
    nn.Linear: StackedLinear,
    nn.LayerNorm: StackedLayerNorm,
    nn.Conv2d: StackedConv2d,
    nn.BatchNorm2d: StackedBatchNorm2d,
    PatchEmbed: StackedPatchEmbed,
    FeedbackMatrices: StackedFeedbackMatrices,
    nn.ParameterList: stacked_parameter_list,
}

#: Modules without state of their own whose code treats every sample of the batch apart:
#: their children are stacked and they run unchanged on a stacked batch.
PER_SAMPLE: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.ModuleList,
    nn.Identity,
    nn.Flatten,
    nn.GELU,
    nn.ReLU,
    nn.MaxPool2d,
    ResMLP,
    ResMLPBlock,
    ViTMini,
    TransformerBlock,
    SelfAttention,
    SmallCNN,
    ConvBlock,
    StudentNet,
    LadderBlock,
    Bridge,
)

#: Optimizers whose update of each parameter element depends on that element's own history
#: only: one of them over stacked parameters is K independent ones.
ELEMENTWISE_OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad")


class NotStackable(ConfigError):
    """The run cannot be stacked over seeds; the message says why and what to do instead."""


RUN_ALONE = "train these seeds one process each (leave out --seeds, or faeval sweep --stack 1)"


def check_stackable(method: CreditMethod) -> None:
    """Refuses a method whose class does not declare that it stacks.

    Raises:
        NotStackable: the class's ``stack_refusal`` (``CreditMethod``) gives a reason, which
            the message names.
    """
    reason = type(method).stack_refusal
    if reason is not None:
        name = type(method).__name__
        raise NotStackable(f"{name} cannot be stacked over seeds: {reason}; {RUN_ALONE}")


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuses an optimizer whose update couples the elements of a parameter.

    Raises:
        NotStackable: the optimizer is not one of ``ELEMENTWISE_OPTIMIZERS``.
    """
    allowed = tuple(getattr(torch.optim, name) for name in ELEMENTWISE_OPTIMIZERS)
    if type(optimizer) not in allowed:
        kind = type(optimizer)
        raise NotStackable(
            f"optimizer {kind.__module__}.{kind.__qualname__} cannot be stacked over seeds: only "
            f"elementwise updates ({', '.join(ELEMENTWISE_OPTIMIZERS)}) keep the seeds "
            f"independent; {RUN_ALONE}"
        )


def stack_modules(modules: list[nn.Module], path: str = "") -> nn.Module:
    """One module doing the work of the K ``modules`` (the same architecture) on stacked rows.

    Raises:
        NotStackable: a module of an unknown type, or one whose seeds differ in structure.
    """
    kind = type(modules[0])
    where = path or "the method"
    if any(type(m) is not kind for m in modules):
        raise NotStackable(f"the seeds' {where} differ in type; they cannot be stacked")
    if kind in STACKED:
        try:
            return STACKED[kind](modules)
        except ValueError as err:
            raise NotStackable(f"{where}: {err}; {RUN_ALONE}") from None
    if kind not in PER_SAMPLE and not isinstance(modules[0], CreditMethod):
        raise NotStackable(
            f"{where} ({kind.__module__}.{kind.__qualname__}) cannot be stacked over seeds: "
            "faeval.stacked does not know whether it keeps the samples of a batch apart; "
            f"{RUN_ALONE}"
        )
    if isinstance(modules[0], CreditMethod):
        stacked = copy.deepcopy(modules[0])  # settings, hyperparameters, metrics: seed 0's
        if kind.get_extra_state is not nn.Module.get_extra_state:  # BRSF's draw counter
            stacked.set_extra_state([m.get_extra_state() for m in modules])  # each seed's
    else:
        stacked = copy.copy(modules[0])
        stacked.__dict__ = {**stacked.__dict__, "_parameters": {}, "_buffers": {}, "_modules": {}}
        if modules[0]._parameters or modules[0]._buffers:
            raise NotStackable(
                f"{where} ({kind.__qualname__}) holds parameters of its own, which "
                f"faeval.stacked does not know how to stack; {RUN_ALONE}"
            )
    for name, buffer in list(modules[0]._buffers.items()):  # a method's own (CreditBridge.epoch)
        if buffer is not None:
            stacked._buffers[name] = stacked_buffer([m._buffers[name] for m in modules])
    for name, param in list(modules[0]._parameters.items()):  # a method's own (FF's label table)
        if param is not None:
            try:
                stacked._parameters[name] = stacked_parameter(
                    [m._parameters[name] for m in modules]
                )
            except ValueError as err:
                raise NotStackable(f"{where}: {err}; {RUN_ALONE}") from None
    for name, child in modules[0]._modules.items():
        if child is None or isinstance(child, Metric):  # the stack measures each seed's tests
            continue
        stacked._modules[name] = stack_modules(
            [m._modules[name] for m in modules], f"{path}.{name}" if path else name
        )
    return stacked


def stack_methods(methods: list[CreditMethod]) -> CreditMethod:
    """One method training the K seeds of ``methods`` on seed-major batches of K·B rows.

    Args:
        methods: K methods of one class and configuration, each built as its own lone run
            builds it (``faeval.cli.stacked`` seeds each construction with its seed).

    Returns:
        A method of the same class: its state dict has each lone method's keys, every tensor
        stacked (K, *shape); ``stack_size`` is K.

    Raises:
        NotStackable: the method, a module or the seeds' structures cannot be stacked.
    """
    for method in methods:
        check_stackable(method)
    if len({type(m) for m in methods}) > 1:
        raise NotStackable("the seeds run different methods; a stack trains one method")
    stacked = stack_modules(methods)
    stacked.stack_size = len(methods)
    own, lone = stacked.state_dict(), methods[0].state_dict()
    if list(own) != list(lone):
        raise NotStackable(f"stacking changed the state's keys ({sorted(set(own) ^ set(lone))})")
    for key, value in lone.items():
        if not isinstance(value, Tensor):  # a method's extra state: each seed's, in a list
            if not isinstance(own[key], list) or len(own[key]) != len(methods):
                raise NotStackable(f"stacking did not keep {key} per seed")
        elif own[key].shape != (len(methods), *value.shape):
            raise NotStackable(f"stacking gave {key} the shape {tuple(own[key].shape)}")
    names = [n for n, _ in stacked.named_parameters()]
    if names != [n for n, _ in methods[0].named_parameters()]:
        raise NotStackable("stacking changed the order of the parameters")
    return stacked


def seed_state(state: dict[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Seed ``seed``'s state (its index in the stack) as an ordinary single-seed state dict.

    Args:
        state: a stacked method's state dict (every tensor (K, *shape), a method's extra
            state the list of its seeds').
        seed: the index of the seed in the stack.
    """
    return {
        key: value[seed].clone() if isinstance(value, Tensor) else value[seed]
        for key, value in state.items()
    }
