"""A study built from many runs: ``faeval sweep`` trains methods × seeds × settings from one
YAML, ``faeval report`` judges them from their logs alone."""
