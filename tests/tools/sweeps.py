"""The tools under test, loaded from tools/, and the tiny sweep both executors run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.helpers import TINY_RUN
from tests.protocol.cli_args import CHEAP

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"faeval_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


sweep, report = load_tool("sweep"), load_tool("report")

SPEC = {
    "seeds": [0, 1],
    "methods": ["DFA"],  # FrozenBlocks joins automatically: 2 methods × 2 seeds
    "args": [*TINY_RUN, "--trainer.max_epochs", "1"],
    "protocol": {"every_n_epochs": 1, "settings": CHEAP},
    "settings": {"tiny": {"model.backbone.w2_std": 0.01}},
}
