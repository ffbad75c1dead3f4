"""Lightning's model summary without a FLOPs column of zeros.

Lightning counts FLOPs only from a module's ``example_input_array``; faeval's methods have
none (their forward is the network's, the credit rules run outside it), so the column and
its total would read 0 for every run. ``ModelSummary`` leaves both out when nothing was
counted, and keeps them when a user's module sets an example input.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from typing_extensions import override


class ModelSummary(LightningModelSummary):
    """Lightning's ``ModelSummary``, without the FLOPs column and total when they are 0."""

    @staticmethod
    @override
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            LightningModelSummary.summarize(
                summary_data, total_parameters, trainable_parameters, model_size,
                total_training_modes, total_flops, **summarize_kwargs,
            )  # fmt: skip
            return
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns
        )
        rank_zero_info("\n" + table.rsplit("\n", 1)[0])  # without "0 Total Flops"
