"""The torch.func fallback: K seeds of a module faeval.stacked does not know, stacked anyway.

A module of a researcher's own (a block with its own ``nn.Parameter``, a custom activation, a
container class faeval has never seen) has no stacked twin. ``FunctionalStack`` stacks its
seeds' parameters and buffers with ``torch.func.stack_module_state`` and runs the module's own
``forward`` once per seed under ``torch.func.vmap`` (``functional_call`` with seed k's tensors
on seed k's rows). Whatever the module's code does over the batch (a mean over dimension 0, a
normalisation over the batch) then sees one seed's B rows, as in its lone run.

It is equal to the lone runs within a tolerance, not bit for bit: vmap turns each seed's
products into one batched product, which rounds otherwise. Measured in float32 on the CPU
(``PYTHONPATH=. python tools/stack_fallback_tolerance.py``: BP, FA, DFA, StateBridge and
CreditBridge on three wrapped networks of unknown modules, K = 3, B = 8, Adam at lr 1e-2):
every seed's gradients after one step within 3e-8 of its lone run's, its parameters and
buffers after five Adam steps within 4e-7 (the same after 20). The documented bounds,
``FALLBACK_GRAD_TOL`` and ``FALLBACK_STATE_TOL`` (rtol 1e-5 with atol 2e-7 and 2e-6), leave
about tenfold room, and tests/stacked/test_fallback.py holds them. One exception, in lone
runs too: a parameter whose true gradient is 0 (a bias before a BatchNorm) gets rounding
noise as its gradient, and Adam turns that noise into steps of size lr with the sign the
rounding picks.

What it cannot stack, refused with the module's path (``NotStackable``): a forward that draws
random numbers (dropout: a lone run's draws cannot be reproduced), that branches on a tensor's
value or calls ``.item()`` (vmap refuses both), or that rebinds a buffer
(``self.stat = ...``: the new tensor would be dropped); a module with extra state of its own.
A buffer updated in place (BatchNorm's running statistics) is updated per seed.
"""

from __future__ import annotations

import copy
import logging

from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from torch.utils._pytree import tree_map
from typing_extensions import override

from faeval.stacked.errors import RUN_ALONE, NotStackable

log = logging.getLogger("faeval")

#: Each seed's gradients in a stacked step through the fallback equal its lone step's within
#: ``torch.testing.assert_close(stacked, lone, **FALLBACK_GRAD_TOL)``, in float32 (measured: 3e-8).
FALLBACK_GRAD_TOL = {"rtol": 1e-5, "atol": 2e-7}
#: Each seed's parameters and buffers after five Adam steps equal its lone run's within
#: ``assert_close(stacked, lone, **FALLBACK_STATE_TOL)``, in float32 (measured: 4e-7).
FALLBACK_STATE_TOL = {"rtol": 1e-5, "atol": 2e-6}


class FunctionalStack(nn.Module):
    """K seeds of one module of unknown type, each run by its own code under ``torch.func.vmap``.

    The state is the module's own, stacked: its parameters and buffers keep their names (so a
    stacked method's state dict has the lone method's keys) and hold (K, *shape). The stacked
    tensors live in a deep copy of seed 0's module, the template, whose parameter, buffer and
    child dictionaries this module shares: the template's code runs on them through
    ``functional_call``, and ``state_dict``, ``to``, ``train`` and optimizers see them here.

    Equal to the lone runs within ``FALLBACK_GRAD_TOL`` (one step's gradients) and
    ``FALLBACK_STATE_TOL`` (parameters and buffers after five Adam steps), not bit for bit.

    Args:
        modules: the K seeds' modules, one class, the same parameter and buffer names and shapes.
        path: the module's path in the stacked method, for messages.

    Raises:
        NotStackable: the seeds differ in structure, or the module has extra state.
    """

    def __init__(self, modules: list[nn.Module], path: str) -> None:
        super().__init__()
        first = modules[0]
        self.seeds, self.path = len(modules), path
        self.kind = f"{type(first).__module__}.{type(first).__qualname__}"
        stateful = [
            f"its {name}" if name else "it"
            for name, m in first.named_modules()
            if type(m).get_extra_state is not nn.Module.get_extra_state
        ]
        if stateful:
            raise self.refusal(f"{stateful[0]} keeps extra state (get_extra_state)")
        names = [(list(dict(m.named_parameters())), list(dict(m.named_buffers()))) for m in modules]
        if any(n != names[0] for n in names):
            raise self.refusal("the seeds' modules differ in their parameters or buffers")
        try:
            params, buffers = stack_module_state(modules)  # each (K, *shape), new leaves
        except RuntimeError as err:  # shapes, training modes or requires_grad differ
            raise self.refusal(str(err).splitlines()[0]) from None
        template = copy.deepcopy(first)
        stacked = {name: nn.Parameter(p.detach(), p.requires_grad) for name, p in params.items()}
        by_id = {id(p): stacked[name] for name, p in template.named_parameters()}
        by_id.update({id(b): buffers[name] for name, b in template.named_buffers()})
        for module in template.modules():  # every place a tensor sits (tied ones too)
            for tensors in (module._parameters, module._buffers):
                for name, t in tensors.items():
                    if t is not None:
                        tensors[name] = by_id[id(t)]
        self.__dict__["template"] = template  # not a child: its tensors are registered below
        for key in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
            self.__dict__[key] = template.__dict__[key]  # one state, two views

    def refusal(self, reason: str) -> NotStackable:
        """The one-line refusal for this module, with its path and the reason."""
        return NotStackable(
            f"{self.path} ({self.kind}) cannot be stacked through the torch.func fallback: "
            f"{reason}; {RUN_ALONE}"
        )

    @override
    def forward(self, *args: object) -> object:
        """Seed k's module on seed k's rows: (K·B, ...) inputs -> (K·B, ...) outputs.

        Every tensor argument and output has the batch as its first dimension, seed-major.

        Raises:
            NotStackable: the module's code cannot run per seed under vmap (random draws,
                control flow on a tensor's value, ``.item()``) or rebinds a buffer.
        """
        k = self.seeds
        params, buffers = dict(self.named_parameters()), dict(self.named_buffers())
        self.template.training = self.training  # its children's flags are this module's
        split = [a.reshape(k, -1, *a.shape[1:]) if isinstance(a, Tensor) else a for a in args]
        in_dims = (0, 0, *(0 if isinstance(a, Tensor) else None for a in args))

        def one_seed(p: dict, b: dict, *xs: object) -> object:
            return functional_call(self.template, (p, b), xs)

        rebound = []
        inside = {id(m) for m in self.template.modules()}

        def on_buffer(module: nn.Module, name: str, value: Tensor | None) -> None:
            if id(module) in inside:  # swaps by functional_call write _buffers directly
                rebound.append(name)

        hook = nn.modules.module.register_module_buffer_registration_hook(on_buffer)
        try:
            # (K, B, ...) per input -> (K, B, ...) per output: seed k's tensors on its rows
            out = vmap(one_seed, in_dims=in_dims, randomness="error")(params, buffers, *split)
        except RuntimeError as err:
            if not str(err).startswith("vmap:"):
                raise
            raise self.refusal(vmap_reason(str(err))) from None
        finally:
            hook.remove()
        if rebound:
            raise self.refusal(
                f"its forward rebinds the buffer {rebound[0]!r} (self.{rebound[0]} = ...), "
                "which the fallback would drop; update it in place instead"
            )
        return tree_map(lambda t: t.flatten(0, 1) if isinstance(t, Tensor) else t, out)

    @override
    def extra_repr(self) -> str:
        return f"{self.kind}, seeds={self.seeds}, through torch.func.vmap"


#: What vmap's refusals mean for a module's code, by a phrase of vmap's message.
VMAP_REASONS = {
    "random operation": "its forward draws random numbers (dropout, noise), which stacked seeds "
    "cannot draw as their lone runs do",
    "data-dependent control flow": "its forward branches on a tensor's value, which vmap cannot "
    "run per seed",
    ".item()": "its forward calls .item() on a tensor, which vmap cannot run per seed",
}


def vmap_reason(message: str) -> str:
    """The reason to give for one of vmap's refusals (its own first line if not known)."""
    reason = next((r for phrase, r in VMAP_REASONS.items() if phrase in message), None)
    return reason or message.splitlines()[0].removeprefix("vmap: ")


def note_fallback(paths: list[str]) -> None:
    """One log line: which modules stack through the fallback, and what that costs."""
    log.warning(
        "faeval.stacked: %s %s through the torch.func fallback (%s faeval.stacked does not "
        "know): each seed equals its lone run within rtol %g / atol %g (gradients), not bit "
        "for bit",
        ", ".join(paths),
        "stacks" if len(paths) == 1 else "stack",
        "a module" if len(paths) == 1 else "modules",
        FALLBACK_GRAD_TOL["rtol"],
        FALLBACK_GRAD_TOL["atol"],
    )
