"""Hyperparameters as plain data, in the form LightningCLI records them.

A method built by ``faeval fit`` records its arguments as LightningCLI does: the class path
under ``_class_path``, every argument as plain data, a class or factory argument (the
backbone, the optimizer) as ``{"class_path": ..., "init_args": {...}}``. A method built
from Python would record the objects themselves (a class, a ``functools.partial``), which
a weights-only ``torch.load`` refuses, so ``faeval audit`` could not read its checkpoints.
``plain_hparams`` turns them into the CLI's form: the checkpoint then loads weights-only,
``Method.load_from_checkpoint(path)`` rebuilds the method, and ``faeval audit`` rebuilds it
from the checkpoint alone.
"""

from __future__ import annotations

import enum
import functools
import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch

#: The key under which LightningCLI records the class of a module's hyperparameters.
CLASS_PATH = "_class_path"
#: The key under which it records how to rebuild the module from them.
INSTANTIATOR = "_instantiator"
#: The rebuild function LightningCLI records (``load_from_checkpoint`` calls it).
CLI_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"


def import_path(obj: Any) -> str | None:
    """``module.Name`` of a class or function importable by that name, else None."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or not name or "<" in name or module == "__main__":
        return None
    return f"{module}.{name}"


def plain(value: Any) -> Any:
    """``value`` as data a weights-only checkpoint holds and jsonargparse reads back.

    Numbers, strings, None and tensors stay as they are; tuples become lists; a class or
    an importable function becomes its import path in a ``class_path`` dict (a function:
    the path string); ``functools.partial(cls, **kw)`` becomes
    ``{"class_path": cls, "init_args": kw}``. Anything else (an object, a lambda) becomes
    its ``repr``: the checkpoint stays readable, and rebuilding the method from it fails
    with that text in the error instead of running pickled code.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, functools.partial) and inspect.isclass(value.func) and not value.args:
        path = import_path(value.func)
        if path is not None:
            return {"class_path": path, "init_args": plain(value.keywords)}
    if inspect.isclass(value) and (path := import_path(value)) is not None:
        return {"class_path": path}
    if inspect.isfunction(value) and (path := import_path(value)) is not None:
        return path
    return repr(value)


def plain_hparams(cls: type, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of an instance of ``cls`` in LightningCLI's recorded form.

    Args:
        cls: the module's class (recorded as ``_class_path``).
        hparams: its arguments as ``save_hyperparameters`` collected them.
    """
    out = {CLASS_PATH: import_path(cls) or repr(cls)}
    out.update({k: plain(v) for k, v in hparams.items() if k not in (CLASS_PATH, INSTANTIATOR)})
    out[INSTANTIATOR] = CLI_INSTANTIATOR
    return out


def class_config(hparams: Mapping[str, Any], skip: frozenset[str] | set[str] = frozenset()) -> dict:
    """Recorded hyperparameters back as a class-path config (``--model``/``--data`` JSON).

    Args:
        hparams: as recorded (``_class_path`` and the arguments).
        skip: arguments to leave out (the ones the command line links from elsewhere).
    """
    init_args = {k: v for k, v in hparams.items() if not k.startswith("_") and k not in skip}
    return {"class_path": hparams[CLASS_PATH], "init_args": init_args}
