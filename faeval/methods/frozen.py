"""FrozenBlocks: the baseline that tells whether a method uses depth."""

from __future__ import annotations

from typing import ClassVar

from faeval.methods.bp import BP
from faeval.runlog import DEPTH_BASELINE


class FrozenBlocks(BP):
    """BP with every block frozen at its initialisation: only embedding and readout train.

    A method whose accuracy does not clear this baseline (diagnostic (d)) has not used its
    deep layers. Its rows carry the role ``depth_baseline``, by which the verdicts, the
    audit and the report know it. See ``CreditMethod`` for the arguments.
    """

    role: ClassVar[str] = DEPTH_BASELINE
    stack_refusal: ClassVar[str | None] = None  # stacks (tests/stacked/test_convert.py)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.backbone.blocks.requires_grad_(False)
