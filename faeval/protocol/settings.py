"""The protocol's two groups of settings, in one place: the verdicts' thresholds and the
heavier pieces' measurement settings. Used alike by the ``Diagnostics`` and ``Protocol``
callbacks, ``faeval audit`` (``--thresholds.*``, ``--protocol.*``), the verdicts and the
report. Pure Python (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from faeval.errors import ConfigError

#: Seeds of the null band's fresh feedback draws start here, far from the small seeds runs
#: are given.
NULL_SEED = 1_000_003


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the protocol, printed with the verdicts.

    Attributes:
        growth_threshold: (a) fires when max_l ‖h_l‖ / ‖h_l‖ at init exceeds it (healthy
            runs of the seed study stayed below 11, degenerate ones exceeded 690).
        grad_floor: (b) fires when ‖g_L‖ is below it (or non-finite); healthy and
            degenerate runs differ by ~10⁴ around 1e-7 on the mean-loss scale.
        stability_threshold: (c) reads FIRES when the mean pairwise cosine of batch-mean
            credit directions is below it (advisory: not a clean pass/fail on its own).
        margin: (d) fires when test accuracy − FrozenBlocks accuracy is below it (a
            fraction: 0.02 is 2 percentage points).
        null_sigmas: Mode 2 fires when the deep-layer cosine does not exceed the null mean
            plus this many null standard deviations (for methods without a feedback draw:
            deep ρ against its negative control, the same way).
    """

    growth_threshold: float = 50.0
    grad_floor: float = 1e-7
    stability_threshold: float = 0.1
    margin: float = 0.02
    null_sigmas: float = 2.0

    def __post_init__(self) -> None:
        if not (self.growth_threshold > 0 and self.grad_floor > 0 and self.null_sigmas >= 0):
            raise ConfigError(
                "thresholds need growth_threshold > 0, grad_floor > 0 and null_sigmas >= 0, got "
                f"{self.growth_threshold}, {self.grad_floor}, {self.null_sigmas}"
            )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class ProtocolSettings:
    """Settings of the heavier pieces (defaults and reasons: docs/protocol.md).

    Attributes:
        null_draws: K, fresh feedback draws of the null band (at least 2).
        null_seed: seed of the first fresh draw.
        directions: M, random unit directions per sample for ρ.
        epsilon: ε, the step of ρ.
        negative_draws: random credits of ρ's negative control.
        stability_batches: probe batches of diagnostic (c) (the protocol asks for ≥ 8).
        stability_batch_size: samples per batch of diagnostic (c) (128 in the protocol).
        seed: seed of ρ's directions and random credits.
    """

    null_draws: int = 8
    null_seed: int = NULL_SEED
    directions: int = 32
    epsilon: float = 1e-3
    negative_draws: int = 8
    stability_batches: int = 8
    stability_batch_size: int = 128
    seed: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


#: Epochs of the study's reference runs (CIFAR-10, 100 epochs; docs/reference-results.md), on
#: which the thresholds were read: (a) and (b) may fire only late (the floor was crossed
#: within 11 of 100 epochs) and (d)'s margin moves as both runs train, so a shorter budget
#: is reported with a warning.
REFERENCE_EPOCHS = 100

#: The defaults, for arguments that take one threshold alone.
DEFAULT_THRESHOLDS = Thresholds()
