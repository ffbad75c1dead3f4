"""Reading a faeval checkpoint safely, and refusing one that would give a fake verdict."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faeval.errors import CheckpointError, DataNotFoundError, IncompleteCheckpoint
from faeval.hparams import CLASS_PATH


def load_checkpoint(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """A faeval Lightning checkpoint, loaded without running pickled code by default.

    Lightning checkpoints of faeval runs hold only tensors, numbers, strings and containers
    (the hyperparameters are class-path dicts, however the method was built: see
    ``faeval.hparams``), so ``weights_only`` loading reads them whole.

    Args:
        path: the ``.ckpt`` file.
        weights_only: refuse pickled objects other than tensors and plain containers; turn off
            only for a file you trust.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt, not a torch file, holds objects that weights-only
            loading refuses, or is not a faeval checkpoint.
    """
    path = Path(path)
    ckpt = load_lightning_checkpoint(path, weights_only)
    # A faeval method (faeval's own or a researcher's ``CreditMethod`` subclass) records its
    # class path and keeps its network under ``backbone.``.
    class_path = str(ckpt.get("hyper_parameters", {}).get(CLASS_PATH, ""))
    if not class_path or not any(k.startswith("backbone.") for k in ckpt["state_dict"]):
        raise CheckpointError(
            f"{path} is not a faeval checkpoint (model class {class_path or 'unknown'!r}, no "
            "backbone.* weights); audit a checkpoint of a faeval method (`faeval fit` or a "
            "Trainer from Python)"
        )
    return ckpt


def load_lightning_checkpoint(path: str | Path, weights_only: bool = True) -> dict[str, Any]:
    """Any Lightning checkpoint (a stack of seeds' too), loaded as ``load_checkpoint`` loads.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt, not a torch file, holds objects that weights-only
            loading refuses, or has no ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(
            f"no checkpoint at {path}; pass a .ckpt file from a run's checkpoints/ folder or "
            "the run directory itself"
        )
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a torch checkpoint (not the zip format torch.save "
            "writes: corrupt, truncated or another kind of file)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise CheckpointError(
                f"{path} holds pickled objects that weights-only loading refuses: "
                f"{str(err).splitlines()[-1][:200]}. If you trust the file, pass "
                "--weights_only false"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or not a torch file): {err}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt or not a torch file): "
            f"{str(err).splitlines()[0][:200]}"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no state_dict); audit a .ckpt "
            "that `faeval fit` wrote"
        )
    return ckpt


def method_name(ckpt: dict[str, Any]) -> str:
    """The method's class name recorded in the checkpoint (``DFA`` for ``faeval.methods.DFA``)."""
    return str(ckpt["hyper_parameters"][CLASS_PATH]).rsplit(".", 1)[-1]


def load_method_state(model: nn.Module, ckpt: dict[str, Any], path: str | Path) -> None:
    """Loads the checkpoint's weights and every credit source into ``model``, strictly.

    Raises:
        ValueError: the model built from the config is another method than the checkpoint's.
        RuntimeError: the checkpoint lacks state the model needs (feedback matrices, helper
            nets) or holds state it does not: a missing credit source never falls back to the
            true gradient (that would make Γ read 1.0).
    """
    saved = method_name(ckpt)
    if saved != type(model).__name__:
        raise CheckpointError(
            f"{path} is a {saved} checkpoint but the config builds {type(model).__name__}; "
            "audit it with the config.yaml of its own run"
        )
    state = ckpt["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        credit = [k for k in missing if not k.startswith("backbone.")]
        what = (
            "its credit source (" + ", ".join(credit[:6]) + ")"
            if credit
            else "backbone weights (" + ", ".join(missing[:6]) + ")"
        )
        raise IncompleteCheckpoint(
            f"{path} lacks {what}: the {saved} credit cannot be computed, and it never falls "
            "back to the true gradient (Γ would read 1.0). Audit a complete checkpoint written "
            "by `faeval fit`"
        )
    if unexpected:
        raise IncompleteCheckpoint(
            f"{path} holds state that {saved} built from this config does not have "
            f"({', '.join(unexpected[:6])}); the config does not match the checkpoint"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise IncompleteCheckpoint(
            f"{path} does not fit the model its config builds: {err}"
        ) from None
