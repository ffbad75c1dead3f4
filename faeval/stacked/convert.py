"""Stacking K single-seed methods into one, and reading one seed back out.

``stack_methods`` takes K methods built exactly as K lone runs build them (each from its
own seed: weights, feedback draw, helper nets) and returns one method of the same class
whose parameters and buffers hold the K seeds' stacked as (K, *shape), set to train on
seed-major batches of K·B rows (``CreditMethod.stack_size``). ``seed_state`` reads seed k's
state back as an ordinary state dict, which loads into the single-seed method.

Modules faeval knows are replaced by stacked twins (``STACKED``) or kept as containers whose
code treats every sample apart (``PER_SAMPLE``): each seed is then its lone run bit for bit on
the CPU. A module of any other type (a researcher's own block or activation) stacks through
the torch.func fallback (``faeval.stacked.fallback.FunctionalStack``): its own code runs once
per seed under vmap, equal to the lone runs within ``FALLBACK_GRAD_TOL``/``FALLBACK_STATE_TOL``, not
bit for bit, and the run says so in one log line.

What cannot be stacked correctly is refused with the reason, never run: a method whose class
does not declare that it stacks (``CreditMethod.stack_refusal``, read from the class itself: a
subclass that says nothing does not stack), a backbone class of one's own (the methods call
its parts, not only its forward), a layer-wise feedback method on a network with a fallback
module, a module the fallback refuses (random draws, control flow on values, a rebound
buffer), an optimizer that is not elementwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from faeval.backbones.base import LayeredBackbone
from faeval.backbones.cnn import ConvBlock, SmallCNN
from faeval.backbones.mlp import MLP
from faeval.backbones.resmlp import ResMLP, ResMLPBlock
from faeval.backbones.student import LadderBlock, StudentNet
from faeval.backbones.vit import PatchEmbed, SelfAttention, TransformerBlock, ViTMini
from faeval.backbones.wrapped import Wrapped
from faeval.methods import CreditMethod
from faeval.methods.common import FeedbackMatrices
from faeval.methods.layerwise import LayerFeedbackMethod
from faeval.methods.state_bridge import Bridge
from faeval.stacked.errors import RUN_ALONE, NotStackable
from faeval.stacked.fallback import FunctionalStack, note_fallback
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
#: their children are stacked and they run unchanged on a stacked batch. A subclass that
#: adds nothing but its ``__init__`` counts as its base (``per_sample``).
PER_SAMPLE: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.ModuleList,
    nn.Identity,
    nn.Flatten,
    nn.GELU,
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.MaxPool2d,
    Wrapped,
    ResMLP,
    ResMLPBlock,
    ViTMini,
    TransformerBlock,
    SelfAttention,
    SmallCNN,
    ConvBlock,
    StudentNet,
    LadderBlock,
    MLP,
    Bridge,
)

#: Optimizers whose update of each parameter element depends on that element's own history
#: only: one of them over stacked parameters is K independent ones.
ELEMENTWISE_OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad")


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


def per_sample(kind: type[nn.Module]) -> bool:
    """Whether ``kind`` is in ``PER_SAMPLE``, or subclasses one that is with only an ``__init__``
    of its own (a ``Wrapped`` subclass that builds a network, an ``nn.Sequential`` of layers)."""
    base = next((b for b in kind.__mro__ if b in PER_SAMPLE), None)
    if base is None:
        return False
    own = [
        name
        for cls in kind.__mro__[: kind.__mro__.index(base)]
        for name, value in vars(cls).items()
        if name != "__init__"
        and (callable(value) or isinstance(value, (property, classmethod, staticmethod)))
    ]
    return not own


def stack_modules(modules: list[nn.Module], path: str = "") -> nn.Module:
    """One module doing the work of the K ``modules`` (the same architecture) on stacked rows.

    A module of a type neither in ``STACKED`` nor per sample stacks through the torch.func
    fallback (``FunctionalStack``), its children with it.

    Raises:
        NotStackable: a backbone class of its own, a module the fallback refuses, or seeds
            that differ in structure.
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
    method = isinstance(modules[0], CreditMethod)
    known = per_sample(kind) and not (modules[0]._parameters or modules[0]._buffers)
    if isinstance(modules[0], LayeredBackbone) and not known:
        raise NotStackable(
            f"{where} ({kind.__module__}.{kind.__qualname__}) cannot be stacked over seeds: "
            "a backbone with code or tensors of its own, whose embed, blocks and readout the "
            "methods call apart, which the torch.func fallback (forward only) cannot stack; "
            f"give its parts to faeval.backbones.Wrapped, or {RUN_ALONE}"
        )
    if not known and not method:  # its own code, run per seed by torch.func
        return FunctionalStack(modules, where)
    if method:
        stacked = copy.deepcopy(modules[0])  # settings, hyperparameters, metrics: seed 0's
        if kind.get_extra_state is not nn.Module.get_extra_state:  # StepDrawMethod's
            stacked.set_extra_state([m.get_extra_state() for m in modules])  # each seed's
    else:
        stacked = copy.copy(modules[0])
        stacked.__dict__ = {**stacked.__dict__, "_parameters": {}, "_buffers": {}, "_modules": {}}
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
    fallback = [m.path for m in stacked.modules() if isinstance(m, FunctionalStack)]
    if fallback and isinstance(stacked, LayerFeedbackMethod):
        raise NotStackable(
            f"{type(stacked).__name__} cannot be stacked over seeds with {fallback[0]}, a "
            "module faeval.stacked does not know: layer-wise feedback needs every layer's "
            f"forward_with_feedback, which the torch.func fallback does not offer; {RUN_ALONE}"
        )
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
    if fallback:
        dry_run(stacked)
        note_fallback(fallback)
    return stacked


@torch.no_grad()
def dry_run(method: CreditMethod) -> None:
    """A forward pass of two samples per seed, so that a module the fallback cannot run
    (``FunctionalStack``) is refused now rather than at the first step; every buffer (running
    statistics) is put back as it was.

    Raises:
        NotStackable: the fallback refuses a module of the backbone.
    """
    backbone = method.backbone
    saved = [(b, b.clone()) for b in method.buffers()]
    p = next(method.parameters(), None)
    x = torch.zeros(
        (2 * method.stack_size, *backbone.input_shape),
        dtype=p.dtype if p is not None else None,
        device=p.device if p is not None else None,
    )
    try:
        backbone.trace(x)
    finally:
        for buffer, value in saved:
            buffer.copy_(value)


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
