"""The one mechanism of per-step random draws: a seed, the step count t, a generator per step."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor
from typing_extensions import override

from faeval.methods.base import CreditMethod
from faeval.seeding import mixed_seed, resolve_seed

Draw = TypeVar("Draw")


class StepDrawMethod(CreditMethod, abc.ABC):
    """A method whose credits or losses draw random numbers afresh at every training step.

    The draws of the step after t updates come from generators of their own, seeded from
    (``draw_seed``, ``stream``, t, *words) (``faeval.seeding.mixed_seed``): a step's draw is
    fixed by the seed and the count alone. Both are the method's state (in every checkpoint,
    as the module's extra state, the seed under ``seed_key``), so a resumed run draws what an
    uninterrupted one would have, and a diagnostic pass between steps (which asks for credits
    too) takes the next step's draw without consuming it. t advances after each training step.

    With K seeds stacked (``faeval.stacked``), each seed keeps its own draw seed
    (``seed_draws``) and makes its own draw, from its own generator and of one seed's shape
    (``step_draws``): seed k draws what its lone run draws, and its checkpoint holds its lone
    run's state. Every per-step draw of faeval goes through here: ForwardGradient's
    directions, FF's negative labels, BRSF's magnitudes, the target-propagation family's noise.

    Args:
        draw_seed: seed of the per-step draws; default the run's seed (a subclass may name
            the option otherwise and pass it on, as BRSF's and TP's ``feedback_seed``).
        *args, **kwargs: the arguments of ``CreditMethod``.
    """

    #: The method's stream of draws: (seed, ``stream``, t). Each subclass takes its own.
    stream: ClassVar[int] = 0
    #: The draw seed's key in the extra state: the method's option, so checkpoints keep it.
    seed_key: ClassVar[str] = "draw_seed"

    def __init__(self, *args, draw_seed: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.draw_seed = resolve_seed(draw_seed)
        self.updates = 0  # t: training steps taken so far
        #: With K seeds stacked (``faeval.stacked``), each seed's draw seed; None alone.
        self.seed_draws: list[int] | None = None

    # Left out of a compiled step (``--stack.compile``): Dynamo cannot capture a generator's
    # creation, and traced it would recompile the seeding for every (seed, t) up to its limit.
    @torch.compiler.disable
    def step_generators(
        self, *words: int, device: torch.device | None = None
    ) -> list[torch.Generator]:
        """The generators of the step after ``updates`` updates, one per seed (one alone), each
        seeded from (the seed's draw seed, ``stream``, t, *``words``), on ``device`` (the CPU,
        where a run draws the same on any device, unless a draw is made on the device)."""
        seeds = [self.draw_seed] if self.seed_draws is None else self.seed_draws
        words = (self.stream, self.updates, *words)
        return [torch.Generator(device=device).manual_seed(mixed_seed(s, *words)) for s in seeds]

    def step_draws(
        self,
        draw: Callable[..., Draw],
        *rows: Tensor,
        generators: list[torch.Generator] | None = None,
    ) -> list[Draw]:
        """The step's draw of every seed: ``draw(generator, *rows)``, one seed's at a time.

        Alone, one draw with the whole batch's ``rows``. With K seeds stacked, K draws, seed
        k's from its own generator with its own rows of each of ``rows`` (seed-major, as the
        batch), so each is what the seed's lone run draws. The caller joins them:
        concatenated along the rows for a draw per row, seed-major as the batch.

        Args:
            draw: makes one seed's draw from its generator and its rows (labels, logits,
                states whose shapes the draw takes).
            rows: tensors of the batch's rows, handed to ``draw`` one seed's rows at a time.
            generators: the seeds' generators, to draw on from them (``step_generators``);
                default fresh CPU generators at the start of the step's draw.
        """
        gens = self.step_generators() if generators is None else generators
        parts = zip(*(r.chunk(len(gens)) for r in rows), strict=True) if rows else [()] * len(gens)
        return [draw(gen, *part) for gen, part in zip(gens, parts, strict=True)]

    @override
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.updates += 1  # the next step draws anew
        return loss

    @override
    def get_extra_state(self) -> dict[str, Any] | list[dict[str, Any]]:
        if self.seed_draws is not None:  # stacked: each seed's, as its lone run keeps it
            return [{self.seed_key: s, "updates": self.updates} for s in self.seed_draws]
        return {self.seed_key: self.draw_seed, "updates": self.updates}

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
            self.seed_draws = [int(s[self.seed_key]) for s in state]
            state = state[0]
        self.draw_seed = int(state[self.seed_key])
        self.updates = int(state["updates"])
