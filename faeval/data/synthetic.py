"""SyntheticLadder: labels from a fixed random teacher whose nonlinearity is dialled by alpha."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from typing_extensions import override

from faeval.data.base import PROBE_SIZE, InMemoryDataModule
from faeval.data.contract import note_small_probe
from faeval.errors import ConfigError
from faeval.ladder import ladder_activation


class Teacher:
    """A seeded random network giving class scores: s(x) = W_depth·φ_α(… φ_α(W_1·x)).

    depth linear maps with depth − 1 nonlinearities φ_α between them and no biases, so at
    α = 0 the scores are exactly linear in x. Weights are N(0, 1/fan_in), so pre-activations
    stay O(1) at every depth. The same generator state gives the same weights.

    Args:
        input_dim: dimension of x.
        width: hidden width.
        num_classes: C, the number of scores.
        depth: number of linear maps (>= 1).
        alpha: nonlinearity of φ_α.
        generator: the random stream the weights are drawn from (seeded by the caller).
    """

    def __init__(
        self,
        input_dim: int,
        width: int,
        num_classes: int,
        depth: int,
        alpha: float,
        generator: torch.Generator,
    ) -> None:
        dims = [input_dim] + [width] * (depth - 1) + [num_classes]
        self.weights = [
            torch.randn(o, i, generator=generator) / math.sqrt(i)
            for i, o in itertools.pairwise(dims)
        ]
        self.alpha = alpha
        self.depth = depth

    def scores(self, x: Tensor) -> Tensor:
        """The pre-argmax class scores s(x). (N, input_dim) -> (N, C)."""
        h = x
        for k, w in enumerate(self.weights):
            h = h @ w.T  # (N, in) @ (in, out) -> (N, out)
            if k < len(self.weights) - 1:
                h = ladder_activation(h, self.alpha)
        return h


class SyntheticLadder(InMemoryDataModule):
    """Gaussian inputs labelled by the argmax of a random teacher, generated in memory.

    The nonlinearity ladder: φ_α(z) = (1 − α)·z + α·tanh(z) interpolates the teacher from
    exactly linear (α = 0) to a tanh network (α = 1); ``depth`` sets how many nonlinearities
    are composed. The teacher (``self.teacher``) and the inputs x ~ N(0, I) are fixed by
    ``teacher_seed``: one random stream gives the teacher's weights, then, continuing, the
    inputs (torch's CPU generator keeps only 32 bits of a seed, so a second seed derived
    from the first could repeat another teacher's stream). ``StudentNet`` with the same
    ``width``, ``depth`` and ``alpha`` is the matching student.

    Args:
        input_dim: dimension of x ~ N(0, I).
        num_classes: C.
        alpha: nonlinearity of the teacher, 0 (linear) to 1 (tanh).
        depth: number of teacher linear maps (depth − 1 nonlinearities).
        width: teacher hidden width.
        n_train: training samples.
        n_test: test samples.
        teacher_seed: seed of the teacher and of the inputs (not of the shuffling: ``seed``).
        **kwargs: the arguments of ``InMemoryDataModule`` (``batch_size``,
            ``eval_batch_size``, ``probe_size``, ``random_targets``, ``seed``).
    """

    def __init__(
        self,
        input_dim: int = 64,
        num_classes: int = 10,
        alpha: float = 1.0,
        depth: int = 2,
        width: int = 128,
        n_train: int = 20000,
        n_test: int = 4096,
        teacher_seed: int = 0,
        **kwargs,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")
        if depth < 1 or input_dim < 1 or width < 1 or num_classes < 2 or min(n_train, n_test) < 1:
            raise ConfigError(
                f"SyntheticLadder needs depth, input_dim, width, n_train, n_test >= 1 and "
                f"num_classes >= 2, got depth={depth}, input_dim={input_dim}, width={width}, "
                f"n_train={n_train}, n_test={n_test}, num_classes={num_classes}"
            )
        wanted = kwargs.get("probe_size", PROBE_SIZE)
        kwargs["probe_size"] = min(wanted, n_test)
        way_out = f"pass --data.n_test {wanted}, or --data.probe_size {n_test}"
        note_small_probe(n_test, wanted, f"SyntheticLadder's test split (n_test={n_test})", way_out)
        super().__init__(**kwargs)
        self.input_shape = (input_dim,)
        self.num_classes = num_classes
        self.n_train, self.n_test = n_train, n_test
        self.alpha, self.depth, self.width = alpha, depth, width
        gen = torch.Generator().manual_seed(teacher_seed)
        self.teacher = Teacher(input_dim, width, num_classes, depth, alpha, gen)
        self._input_stream = gen.get_state()  # the inputs continue the teacher's stream
        self.teacher_seed = teacher_seed

    @override
    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        gen = torch.Generator()
        gen.set_state(self._input_stream)
        x = torch.randn(self.n_train + self.n_test, *self.input_shape, generator=gen)
        y = self.teacher.scores(x).argmax(1)
        return {
            "train": (x[: self.n_train], y[: self.n_train]),
            "test": (x[self.n_train :], y[self.n_train :]),
        }
