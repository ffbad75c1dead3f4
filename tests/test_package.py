"""House rules of the package that a reader relies on: checked, not just hoped for."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import faeval


def _modules():
    for info in pkgutil.walk_packages(faeval.__path__, "faeval."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def test_every_override_is_marked():
    """``@override`` on every method that a base class (ours, Lightning's, torch's) defines."""
    unmarked = []
    for module in _modules():
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for name, value in vars(cls).items():
                func = getattr(value, "__func__", value)
                if name.startswith("__") or not callable(func) or inspect.isclass(func):
                    continue  # not a method (a nested class, e.g. autograd's _backward_cls)
                if any(hasattr(base, name) for base in cls.__mro__[1:]):
                    if not getattr(func, "__override__", False):
                        unmarked.append(f"{module.__name__}.{cls.__name__}.{name}")
    assert not unmarked


def test_the_verdicts_and_the_run_log_import_without_torch():
    """A report judges a sweep from its logs alone; it must not pay for torch."""
    code = (
        "import sys, faeval.runlog, faeval.protocol.verdicts, faeval.protocol.render, "
        "faeval.protocol.settings, faeval.protocol.intervals; "
        "from faeval.protocol import judge_run, judge_seeds, paired_interval, Thresholds; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_protocol_package_exports_what_it_lists():
    import faeval.protocol

    for name in faeval.protocol.__all__:
        assert getattr(faeval.protocol, name) is not None, name


def test_type_hints_ship_with_the_package():
    """PEP 561: ``py.typed`` in the package and in its package data, so wheels carry it."""
    import configparser
    from pathlib import Path

    root = Path(faeval.__file__).parent
    assert (root / "py.typed").is_file()
    cfg = configparser.ConfigParser()
    cfg.read(root.parent / "setup.cfg")
    assert "py.typed" in cfg["options.package_data"]["faeval"].split()


def test_every_cited_docs_page_exists_and_nothing_cites_a_missing_design_document():
    """The README, the package, the tools, the configs and the tests cite docs/ by real paths."""
    import re
    from pathlib import Path

    root = Path(faeval.__file__).parent.parent
    files = [root / "README.md", root / "pyproject.toml", *root.glob("docs/*.md")]
    for folder in ("faeval", "tools", "tests", "configs"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in (".py", ".yaml", ".md")]
    cited = set()
    for path in files:
        text = path.read_text()
        assert "DESIGN" + ".md" not in text, path  # (spelled apart: this file is read too)
        cited |= set(re.findall(r"docs/[\w.-]+\.md", text))
        if path.parent.name == "docs":  # links between the pages
            cited |= {f"docs/{name}" for name in re.findall(r"\]\(([\w.-]+\.md)", text)}
    assert {"docs/notation.md", "docs/protocol.md", "docs/methods.md"} <= cited
    missing = sorted(c for c in cited if not (root / c).is_file())
    assert not missing


def _expand(pattern: str) -> set[str]:
    """``a_{x,y}.yaml`` -> {``a_x.yaml``, ``a_y.yaml``} (the README's shorthand; one brace)."""
    import re

    m = re.search(r"\{([^}]*)\}", pattern)
    if not m:
        return {pattern}
    return {pattern[: m.start()] + part + pattern[m.end() :] for part in m.group(1).split(",")}


def test_every_method_and_config_is_documented():
    """Each method the CLI knows has a row in the README's method table and an entry in
    docs/methods.md; each shipped config has a row in the README's config table."""
    import re
    from pathlib import Path

    from faeval.cli import known_names

    root = Path(faeval.__file__).parent.parent
    readme = (root / "README.md").read_text()
    methods = (root / "docs" / "methods.md").read_text()
    for name in known_names()["model"]:
        assert f"| `{name}` |" in readme, name
        assert re.search(rf"^#+ .*\b{name}\b", methods, re.MULTILINE), name
    listed = set()
    for cell in re.findall(r"^\| (`[^|]*\.yaml`[^|]*) \|", readme, re.MULTILINE):
        for pattern in re.findall(r"`([\w{},]+\.yaml)`", cell):
            listed |= _expand(pattern)
    shipped = {p.name for p in (root / "configs").glob("*.yaml")}
    assert shipped <= listed, sorted(shipped - listed)


def test_the_public_api_is_importable_from_faeval_without_paying_for_it_up_front():
    """``from faeval import DFA, ResMLP, …``: every subpackage's public name, the same object;
    ``import faeval`` alone does not import torch."""
    code = "import sys, faeval; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    import faeval.backbones
    import faeval.callbacks
    import faeval.data
    import faeval.methods
    import faeval.protocol

    for package in (faeval.methods, faeval.backbones, faeval.data, faeval.callbacks,
                    faeval.protocol):  # fmt: skip
        for name in package.__all__:
            assert name in faeval.__all__, name
            assert getattr(faeval, name) is getattr(package, name), name
    from faeval import DFA, Diagnostics, FaevalTrainer, ResMLP, audit_model, load_sweep, run

    assert DFA is faeval.methods.DFA and run.__module__ == "faeval.cli.lightning"
    assert all(x is not None for x in (Diagnostics, FaevalTrainer, ResMLP, audit_model, load_sweep))


def _built_requirements(tmp_path) -> list:
    """The wheel's ``Requires-Dist`` as pip sees them: the package built from a copy of the
    tree (so the checkout gets no build/ or egg-info), with ``build`` where it is installed."""
    import email.parser
    import importlib.util
    import shutil
    import zipfile
    from pathlib import Path

    from packaging.requirements import Requirement

    root = Path(faeval.__file__).parent.parent
    src, out = tmp_path / "src", tmp_path / "dist"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    shutil.copytree(root / "faeval", src / "faeval", ignore=shutil.ignore_patterns("__pycache__"))
    try:  # the build package, not a build/ folder a pip wheel of the checkout leaves behind
        has_build = importlib.util.find_spec("build.__main__") is not None
    except ModuleNotFoundError:
        has_build = False
    if has_build:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, src]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        cmd += ["--no-index", str(src), "-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = out.glob("faeval-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        message = email.parser.Parser().parsestr(zf.read(meta).decode())
    return [Requirement(r) for r in message.get_all("Requires-Dist")]


def _constraints() -> dict[str, str]:
    """constraints.txt as {name: pinned version}; every line must be an exact pin."""
    from pathlib import Path

    from packaging.requirements import Requirement

    pins = {}
    root = Path(faeval.__file__).parent.parent
    for line in (root / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name] = spec.version
    return pins


def test_the_wheel_declares_a_torch_range_and_constraints_pin_the_tested_set(tmp_path):
    """Installing faeval must not replace the user's torch: the wheel asks for a range with a
    floor and a ceiling; the tested release is pinned in constraints.txt, inside the range,
    and tools/install.sh installs with it."""
    from pathlib import Path

    requirements = {r.name: r for r in _built_requirements(tmp_path) if r.marker is None}
    pins = _constraints()
    for name in ("torch", "torchvision"):
        spec = requirements[name].specifier
        assert {s.operator for s in spec} == {">=", "<"}, (name, str(spec))
        assert pins[name] in spec, (name, pins[name], str(spec))
    assert "2.4" in requirements["torch"].specifier  # fused Adam on the CPU: the floor
    assert "2.3.1" not in requirements["torch"].specifier
    for name in ("lightning", "jsonargparse", "torchmetrics", "tensorboard"):
        assert pins[name] in requirements[name].specifier, (name, pins[name])
    root = Path(faeval.__file__).parent.parent
    assert "-c constraints.txt -e '.[test,slurm]'" in (root / "tools" / "install.sh").read_text()
