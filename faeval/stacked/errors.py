"""The refusal every part of faeval.stacked raises, and the way out it names."""

from __future__ import annotations

from faeval.errors import ConfigError

#: The way out of every refusal: the seeds run as lone runs instead.
RUN_ALONE = "train these seeds one process each (leave out --seeds, or faeval sweep --stack 1)"


class NotStackable(ConfigError):
    """The run cannot be stacked over seeds; the message says why and what to do instead."""
