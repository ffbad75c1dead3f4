"""The base of methods whose credits draw random numbers afresh at every training step."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.base import CreditMethod
from faeval.seeding import mixed_seed, resolve_seed

Draw = TypeVar("Draw")


class StepDrawMethod(CreditMethod, abc.ABC):
    """A method whose credit at each step uses a fresh random draw (directions, negative labels).

    The draw of the step after t updates comes from a generator of its own, seeded from
    (``draw_seed``, the method's stream, t) (``faeval.seeding.mixed_seed``): a step's draw is
    fixed by the seed and the count alone. Both are the method's state (in every checkpoint,
    as the module's extra state), so a resumed run draws what an uninterrupted one would have,
    and a diagnostic pass between steps (which asks for credits too) takes the next step's
    draw without consuming it. Draws are made on the CPU, so a run draws the same on any
    device.

    With K seeds stacked (``faeval.stacked``), each seed keeps its own draw seed and makes its
    own draw, from its own generator and of one seed's shape (``step_draws``): seed k draws
    what its lone run draws, and its checkpoint holds its lone run's state.

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
        #: With K seeds stacked (``faeval.stacked``), each seed's draw seed; None alone.
        self.seed_draws: list[int] | None = None

    def step_generator(self, seed: int | None = None) -> torch.Generator:
        """A CPU generator at the start of the draw of the step after ``updates`` updates.

        Args:
            seed: the draw seed (a stacked seed's); default ``draw_seed``.
        """
        seed = self.draw_seed if seed is None else seed
        return torch.Generator().manual_seed(mixed_seed(seed, self.stream, self.updates))

    def step_draws(self, draw: Callable[..., Draw], *rows: Tensor) -> list[Draw]:
        """The step's draw of every seed: ``draw(generator, *rows)``, one seed's at a time.

        Alone, one draw from the step's generator with the whole batch's ``rows``. With K seeds
        stacked, K draws, seed k's from its own generator with its own rows of each of ``rows``
        (seed-major, as the batch), so each is what the seed's lone run draws. The caller
        joins them: concatenated along the rows for a draw per row, seed-major as the batch.

        Args:
            draw: makes one seed's draw from its generator and its rows (labels, logits,
                states whose shapes the draw takes).
            rows: tensors of the batch's rows, handed to ``draw`` one seed's rows at a time.
        """
        if self.seed_draws is None:
            return [draw(self.step_generator(), *rows)]
        seeds = len(self.seed_draws)
        parts = zip(*(r.chunk(seeds) for r in rows), strict=True) if rows else [()] * seeds
        return [
            draw(self.step_generator(seed), *part)
            for seed, part in zip(self.seed_draws, parts, strict=True)
        ]

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int):
        loss = super().training_step(batch, batch_idx)
        self.updates += 1  # the next step draws anew
        return loss

    @override
    def get_extra_state(self) -> dict[str, Any] | list[dict[str, Any]]:
        if self.seed_draws is not None:  # stacked: each seed's, as its lone run keeps it
            return [{"draw_seed": s, "updates": self.updates} for s in self.seed_draws]
        return {"draw_seed": self.draw_seed, "updates": self.updates}

    @override
    def set_extra_state(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """A lone run's state, or with seeds stacked the list of each seed's (``faeval.stacked``
        gives a stacked method the list of its seeds' extra states).

        Raises:
            ValueError: stacked seeds that have taken different numbers of steps.
        """
        if isinstance(state, list):
            counts = {int(s["updates"]) for s in state}
            if len(counts) > 1:
                raise ValueError(
                    f"the stacked seeds have taken different numbers of steps ({sorted(counts)}); "
                    "a stack steps every seed together"
                )
            self.seed_draws = [int(s["draw_seed"]) for s in state]
            state = state[0]
        self.draw_seed = int(state["draw_seed"])
        self.updates = int(state["updates"])
