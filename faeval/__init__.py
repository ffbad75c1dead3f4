"""faeval: train backprop and its alternatives on one backbone, audit their credit.

The public API, importable from ``faeval`` itself::

    from faeval import DFA, ResMLP, FashionMNIST, Diagnostics, audit_model, run

- methods (``faeval.methods``): ``BP``, ``FA``, ``DFA``, ``EP``, ``PC``, … and the bases
  ``CreditMethod``, ``FeedbackMethod``, ``LayerFeedbackMethod``;
- backbones (``faeval.backbones``): ``ResMLP``, ``MLP``, ``SmallCNN``, ``ViTMini``, ``StudentNet``,
  ``Wrapped``, ``LayeredBackbone``, ``Trace``;
- data (``faeval.data``): ``FashionMNIST``, ``CIFAR10``, ``CIFAR100``, ``SyntheticLadder``,
  ``InMemoryDataModule``, ``TensorBatches``;
- callbacks (``faeval.callbacks``): ``Diagnostics``, ``Protocol``, ``FloorStopping``,
  ``LastCheckpoint``, ``LineProgress``;
- the audit and verdicts (``faeval.protocol``): ``audit_model``, ``audit_checkpoint``,
  ``judge_run``, ``judge_seeds``, ``Thresholds``, …;
- runs: ``run`` (the command line from Python: ``run(["fit", "--model", "DFA", ...])``),
  ``run_logger`` (a script's run named and recorded as ``faeval fit``'s), ``FaevalTrainer``,
  ``RunLog``, ``load_sweep``, ``FaevalError``, ``ConfigError``.

Names load on first use (PEP 562), so ``import faeval`` stays cheap and the torch-free parts
(``faeval.runlog``, ``faeval.protocol.verdicts``, the report) never pay for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Subpackages whose ``__all__`` is re-exported here, in lookup order.
_PACKAGES = (
    "faeval.methods",
    "faeval.backbones",
    "faeval.data",
    "faeval.callbacks",
    "faeval.protocol",
)
#: Single names and the module that defines them.
_NAMES = {
    "run": "faeval.cli",
    "run_logger": "faeval.cli.folders",
    "FaevalTrainer": "faeval.trainer",
    "RunLog": "faeval.runlog",
    "load_sweep": "faeval.runlog",
    "FaevalError": "faeval.errors",
    "ConfigError": "faeval.errors",
}


def _public() -> dict[str, str]:
    """Every public name and its module."""
    names = {}
    for package in _PACKAGES:
        for name in importlib.import_module(package).__all__:
            names.setdefault(name, package)
    return {**names, **_NAMES}


def __getattr__(name: str):
    if name == "__all__":
        return sorted(_public())
    module = _NAMES.get(name)
    if module is None and not name.startswith("_"):
        module = _public().get(name)
    if module is None:
        raise AttributeError(f"module 'faeval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_public()})
