"""faeval: train backprop and its alternatives on one backbone, audit their credit."""

__version__ = "0.1.0"
