"""Seeds stacked in one process: K independent runs of one configuration, one kernel for all."""

from faeval.stacked.convert import NotStackable, seed_state, stack_methods

__all__ = ["NotStackable", "seed_state", "stack_methods"]
