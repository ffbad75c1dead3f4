"""The local sweep of SPEC, run once for every study test that reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.study.sweeps import SPEC, sweep


@pytest.fixture(scope="package")
def swept(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    assert (
        sweep.main(
            [str(root / "spec.yaml"), "--out", str(root / "out"), "--jobs", "2", "--cores", "2"]
        )
        == 0
    )
    return root
