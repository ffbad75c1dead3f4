"""The base of methods whose credits draw random numbers afresh at every training step."""

from __future__ import annotations

import abc
from typing import Any

import torch
from typing_extensions import override

from faeval.methods.base import CreditMethod
from faeval.seeding import mixed_seed, resolve_seed


class StepDrawMethod(CreditMethod, abc.ABC):
    """A method whose credit at each step uses a fresh random draw (directions, negative labels).

    The draw of the step after t updates comes from a generator of its own, seeded from
    (``draw_seed``, the method's stream, t) (``faeval.seeding.mixed_seed``): a step's draw is
    fixed by the seed and the count alone. Both are the method's state (in every checkpoint,
    as the module's extra state), so a resumed run draws what an uninterrupted one would have,
    and a diagnostic pass between steps (which asks for credits too) takes the next step's
    draw without consuming it. Draws are made on the CPU, so a run draws the same on any
    device.

    Args:
        draw_seed: seed of the per-step draws; default the run's seed.
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    #: The method's stream of draws: (seed, ``stream``, t). Each subclass takes its own.
    stream: int = 0

    def __init__(self, *args, draw_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.draw_seed = resolve_seed(draw_seed)
        self.updates = 0  # t: optimizer steps taken so far

    def step_generator(self) -> torch.Generator:
        """A CPU generator at the start of the draw of the step after ``updates`` updates."""
        return torch.Generator().manual_seed(mixed_seed(self.draw_seed, self.stream, self.updates))

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss = super().training_step(batch, batch_idx)
        self.updates += 1  # the next step draws anew
        return loss

    @override
    def get_extra_state(self) -> dict[str, Any]:
        return {"draw_seed": self.draw_seed, "updates": self.updates}

    @override
    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.draw_seed = int(state["draw_seed"])
        self.updates = int(state["updates"])
