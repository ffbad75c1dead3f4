"""SyntheticLadder: labels from a fixed random teacher whose nonlinearity is dialled by alpha."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from faeval.data.base import InMemoryDataModule


def ladder_activation(z: Tensor, alpha: float) -> Tensor:
    """φ_α(z) = (1 − α)·z + α·tanh(z): α = 0 is linear, α = 1 fully nonlinear."""
    return (1 - alpha) * z + alpha * torch.tanh(z)


class Teacher:
    """A seeded random network x -> W_depth·φ_α(… φ_α(W_1·x)) giving class scores.

    Weights are N(0, 1/fan_in), so pre-activations stay O(1) at every depth.
    """

    def __init__(self, input_dim: int, width: int, num_classes: int, depth: int, alpha: float,
                 seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        dims = [input_dim] + [width] * (depth - 1) + [num_classes]
        self.weights = [torch.randn(o, i, generator=gen) / math.sqrt(i)
                        for i, o in zip(dims[:-1], dims[1:], strict=True)]
        self.alpha = alpha

    def scores(self, x: Tensor) -> Tensor:
        h = x
        for k, w in enumerate(self.weights):
            h = h @ w.T  # (N, in) @ (in, out) -> (N, out)
            if k < len(self.weights) - 1:
                h = ladder_activation(h, self.alpha)
        return h


class SyntheticLadder(InMemoryDataModule):
    """Gaussian inputs labelled by the argmax of a random teacher, generated in memory.

    Args:
        input_dim: dimension of x ~ N(0, I).
        num_classes: C.
        alpha: nonlinearity of the teacher, 0 (linear) to 1 (tanh).
        depth: number of teacher layers (depth − 1 nonlinearities).
        width: teacher hidden width.
        n_train: training samples.
        n_test: test samples.
        teacher_seed: seed of the teacher and of the inputs.
        batch_size, eval_batch_size, probe_size, random_targets, seed: see
            ``InMemoryDataModule``.
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
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        probe_size: int = 1024,
        random_targets: bool = False,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if depth < 1 or input_dim < 1 or num_classes < 2:
            raise ValueError(
                f"SyntheticLadder needs depth >= 1, input_dim >= 1 and num_classes >= 2, got "
                f"depth={depth}, input_dim={input_dim}, num_classes={num_classes}"
            )
        super().__init__(batch_size, eval_batch_size, min(probe_size, n_test), random_targets,
                         seed)
        self.input_shape = (input_dim,)
        self.num_classes = num_classes
        self.n_train, self.n_test = n_train, n_test
        self.teacher = Teacher(input_dim, width, num_classes, depth, alpha, teacher_seed)
        self.teacher_seed = teacher_seed

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.teacher_seed + 1)
        x = torch.randn(self.n_train + self.n_test, *self.input_shape, generator=gen)
        y = self.teacher.scores(x).argmax(1)
        return {"train": (x[: self.n_train], y[: self.n_train]),
                "test": (x[self.n_train :], y[self.n_train :])}
