"""Lightning's Trainer with faeval's ``audit`` subcommand (LightningCLI turns the method into
``faeval audit``; its parameters become the options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

from faeval.errors import ConfigError
from faeval.protocol.audit import audit_checkpoint, audit_text, write_audit
from faeval.protocol.settings import ProtocolSettings, Thresholds


class FaevalTrainer(Trainer):
    """Lightning's Trainer with faeval's ``audit`` subcommand."""

    def audit(
        self,
        model,
        datamodule=None,
        ckpt_path: str | None = None,
        weights_only: bool = True,
        frozen: str | None = None,
        train_frozen: bool = False,
        thresholds: Thresholds = Thresholds(),
        protocol: ProtocolSettings = ProtocolSettings(),
        out_dir: str | None = None,
    ) -> dict[str, Any]:
        """Recompute every diagnostic of a saved run and print its verdict.

        Usage: ``faeval audit RUN_DIR_OR_CKPT [options]`` (the run's config.yaml rebuilds the
        model and data), or ``faeval audit --config RUN/config.yaml --ckpt_path CKPT``.
        Writes ``<checkpoint>.audit.json`` and ``.audit.md`` next to the checkpoint.

        Args:
            model: the method, built from the run's config (LightningCLI passes it).
            datamodule: the data, built from the run's config (LightningCLI passes it).
            ckpt_path: the checkpoint to audit.
            weights_only: load without running pickled code; false only for a file you trust.
            frozen: the matching FrozenBlocks run (its directory or checkpoint) for (d).
            train_frozen: train the FrozenBlocks baseline with this run's config, seed and
                budget when no ``frozen`` run is given (kept under the run's
                ``frozen_baseline/``).
            thresholds: the verdicts' thresholds (``--thresholds.margin 0.02`` …).
            protocol: the heavier pieces' settings (``--protocol.null_draws 8`` …).
            out_dir: where to write the verdict files (default: beside the checkpoint).

        Returns:
            The audit record written as JSON.

        Raises:
            ValueError: no checkpoint given, or it is not a readable faeval checkpoint.
            RuntimeError: the checkpoint lacks its credit source (feedback, helper nets).
        """
        if ckpt_path is None:
            raise ConfigError(
                "faeval audit needs a checkpoint: faeval audit RUN_DIR_OR_CKPT, or "
                "--ckpt_path CKPT with the run's --config"
            )
        record = audit_checkpoint(
            ckpt_path,
            model.to(self.strategy.root_device),
            datamodule,
            frozen=frozen,
            train_frozen=train_frozen,
            thresholds=thresholds,
            settings=protocol,
            weights_only=weights_only,
        )
        ckpt = Path(ckpt_path)
        files = write_audit(record, out_dir or ckpt.parent, ckpt.stem)
        print(audit_text(record) + f"\n  written: {files[0]}, {files[1]}", flush=True)
        return record.as_dict()
