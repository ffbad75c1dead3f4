"""Short messages for command-line mistakes: the bad value, what is accepted, the way out.

jsonargparse reports a bad option as a multi-line dump of the type machinery ("Does not
validate against any of the Union subtypes…") behind a usage line. ``short_message`` turns
the common cases into one or two lines, with "did you mean" suggestions drawn from the
names and options faeval really has. Anything it does not recognise is passed on, trimmed.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

#: Keys whose value is a class given by short name or class path.
CLASS_KEYS = ("model.backbone", "model", "data")
#: Arguments faeval fills in from the data, not options a user gives.
LINKED = ("input_shape", "num_classes")
#: The class a key takes when the command line does not say.
DEFAULT_CLASS = {"model.backbone": "ResMLP", "model.optimizer": "Adam"}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``; did you mean X?`` for the closest choice (case-insensitive first), or ''."""
    choices = list(choices)
    same = [c for c in choices if c.lower() == word.lower()]
    close = same or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def option_value(argv: list[str], key: str) -> str | None:
    """The value given to ``--key`` on the command line (last one wins), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{key}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def init_parameters(cls: type) -> list[str]:
    """The keyword arguments ``cls`` takes, following ``*args/**kwargs`` up to its bases."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return [n for n in dict.fromkeys(names) if n != "self"]


def resolve_class(name: str, known: dict[str, type]) -> type | None:
    """A class from its short name (``known``) or its dotted import path."""
    if name in known:
        return known[name]
    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            return None
    return None


def short_message(
    message: str,
    argv: list[str],
    names: dict[str, list[str]],
    classes: Callable[[str], dict[str, type]],
    options: Iterable[str],
    commands: Iterable[str],
) -> str:
    """One or two lines for a jsonargparse error ``message``.

    Args:
        message: what jsonargparse reported.
        argv: the command line's arguments.
        names: the short names each class key takes (``known_names()``).
        classes: short name -> class, per class key.
        options: the fixed option strings of the parser (``--trainer.max_epochs`` …).
        commands: the subcommands.
    """
    text = message.strip()
    if m := re.match(r"argument subcommand: invalid choice: '([^']*)'", text):
        cmds = list(commands)
        return (
            f"unknown command {m[1]!r}{did_you_mean(m[1], cmds)}\n"
            f"  commands: {', '.join(cmds)} (faeval --help)"
        )
    if text.startswith('expected "subcommand"'):
        return f"choose a command: {', '.join(commands)} (faeval --help says what each does)"
    if m := re.match(r"the following arguments are required: (.*)", text):
        missing = [k.split(".", 1)[-1] for k in m[1].split(", ")]
        lines = [f"--{k} is required" for k in missing]
        hints = [f"--{k} takes one of: {', '.join(names[k])}" for k in missing if k in names]
        return "; ".join(lines) + ("\n  " + "; ".join(hints) if hints else "")
    if m := re.match(r"unrecognized arguments: (\S+)", text):
        bad = m[1].split("=", 1)[0]
        return f"{bad} is not an option{did_you_mean(bad, options)}\n  faeval fit --help lists them"
    if text.startswith(("Problems parsing config", "Unexpected config")):
        return _bad_config(text, argv)
    if m := re.match(r"Subcommand '\w+' does not accept option '([^']+)'", text):
        # A key of a --config file that is no option (the command line's are "unrecognized").
        file = config_file(argv, m[1].rpartition(".")[2])
        where = f" (in {file})" if file else ""
        bad, hint = f"--{m[1]}", did_you_mean(f"--{m[1]}", options)
        return f"{bad}{where} is not an option{hint}\n  faeval fit --help lists them"
    if m := re.match(r"Option '([^']+)' is not accepted", text):
        return _unknown_option(_full_key(m[1], argv), argv, classes)
    if m := re.match(r'Parser key "([^"]+)":', text):
        key = _full_key(m[1], argv)
        nested = re.search(r"NestedArg\(key='([^']*)', val='(.*)'\)", text)
        if nested is None and (bad := re.search(r"Option '([^']+)' is not accepted", text)):
            # A key of a --config file (or of a class given as a dict): the classes' keys lead
            # to it, and the innermost class path named is the one that does not take it.
            errors = text.split("Errors:", 1)[-1].split("Given value:", 1)[0]
            keys = [key, *re.findall(r'Parser key "([^"]+)":', errors)]
            paths = re.findall(r"class_path[= ]'([^']+)'", errors)
            return _unknown_option(
                ".".join([*keys, bad[1]]), argv, classes, paths[-1] if paths else None
            )
        if nested is None:
            return _bad_value(key, text, None, argv, names, classes)
        # An option of a class given on the command line (--model.penalty x): jsonargparse
        # reports it against the class key; the real complaint is in its list of errors.
        full, value = f"{key}.{nested[1]}", nested[2]
        errors = text.split("Errors:", 1)[-1]
        if "is abstract" in errors or (option_value(argv, key) is None and key in names):
            return (
                f"--{full} was given without --{key}; pass --{key} NAME first\n"
                f"  --{key} takes one of: {', '.join(names.get(key, []))}"
            )
        if m := re.search(r"Option '([^']+)' is not accepted", errors):
            return _unknown_option(full.rpartition(".")[0] + "." + m[1], argv, classes)
        if leaves := re.findall(r'Parser key "([^"]+)":', errors):
            leaf = leaves[-1]  # the innermost complaint
            inner = full if full.endswith("." + leaf) else full.rpartition(".")[0]
            last = errors.rsplit(f'Parser key "{leaf}":', 1)[-1]
            return _bad_value(inner, last, value, argv, names, classes)
    return text.splitlines()[0]


def _full_key(leaf: str, argv: list[str]) -> str:
    """The full dotted key of a leaf name jsonargparse reported, found on the command line."""
    for arg in argv:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if key == leaf or key.endswith("." + leaf):
                return key
    return leaf


def _unknown_option(key: str, argv: list[str], classes, cls_name: str | None = None) -> str:
    """``--model.backbone.d_hiden``: not an option of the chosen class; the closest that is.

    Args:
        key: the full dotted key.
        argv: the command line.
        classes: short name -> class, per class key.
        cls_name: the class the option was given to, when not on the command line (a
            ``--config`` file's); that file is named.
    """
    prefix, _, leaf = key.rpartition(".")
    where = ""
    if cls_name is not None:
        file = config_file(argv, leaf)
        where = f" (in {file})" if file else ""
    cls_name = cls_name or option_value(argv, prefix) or DEFAULT_CLASS.get(prefix)
    cls = resolve_class(cls_name, classes(prefix)) if cls_name else None
    if cls is None:
        return f"--{key}{where} is not an option; faeval fit --help lists them"
    accepted = [a for a in init_parameters(cls) if a not in LINKED]
    hint = did_you_mean(leaf, accepted)
    hint = hint.replace("did you mean ", f"did you mean --{prefix}.") if hint else ""
    return (
        f"--{key}{where} is not an option of {cls.__name__}{hint}\n"
        f"  {cls.__name__} takes: " + ", ".join(f"--{prefix}.{a}" for a in accepted)
    )


def _bad_config(text: str, argv: list[str]) -> str:
    """A ``--config`` file that is not YAML, or not a mapping of options: which, and where."""
    for file in config_files(argv):
        try:
            loaded = yaml.safe_load(Path(file).read_text())
        except OSError:
            continue
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            return f"--config {file} is not valid YAML: {getattr(err, 'problem', err)}{where}"
        if not isinstance(loaded, dict):
            return (
                f"--config {file} is not a mapping of options (key: value lines, as "
                "faeval fit --print_config writes them)"
            )
    return text.splitlines()[0]


def config_files(argv: list[str]) -> list[str]:
    """The ``--config`` files of the command line, in order."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return files + [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]


def config_file(argv: list[str], needle: str | None = None) -> str | None:
    """The ``--config`` file of the command line that holds ``needle`` (the first one given
    when ``needle`` is None), or None."""
    for file in config_files(argv):
        try:
            if needle is None or needle in Path(file).read_text():
                return file
        except OSError:
            continue
    return None


def _bad_value(key: str, text: str, value: str | None, argv: list[str], names, classes) -> str:
    """``--trainer.max_epochs abc``: the value, and the type or the names it should have."""
    given = re.search(r"(?:Given value|Got value): (.*)", text)
    if value is None:
        value = given[1].strip() if given else option_value(argv, key)
    if key in names:
        return _bad_class(key, str(value), text, argv, names, classes)
    if "File does not exist" in text:
        return text.split(":", 1)[1].strip()
    expected = re.findall(r"Expected an? (?:<class '([\w.]+)'>|typing\.(Literal\[[^\]]*\]))", text)
    kinds = [a or b for a, b in expected if (a or b) not in ("NoneType",)]
    want = " or ".join(dict.fromkeys(kinds)) or "another value"
    return f"--{key} {value}: expected {want}"


#: What a class given by path to a class key must be, and where that is explained.
BASES = {
    "model": "a method subclasses faeval.methods.CreditMethod (docs/extending.md)",
    "data": "a data module subclasses lightning.pytorch.LightningDataModule (docs/extending.md)",
}


def _bad_class(key: str, value: str, text: str, argv: list[str], names, classes) -> str:
    """``--model X`` that is no class faeval can use: why (the class path does not import,
    the class is not a method, a key of its config is not an option), else the names."""
    given = _literal(value)
    if isinstance(given, dict) and isinstance(given.get("class_path"), str):
        # From a --config file: {'class_path': 'DFA', 'penalti': 1.0}.
        init = given.get("init_args") if isinstance(given.get("init_args"), dict) else {}
        options = [k for k in given if k not in ("class_path", "init_args", "dict_kwargs")]
        cls = resolve_class(given["class_path"], classes(key))
        accepted = init_parameters(cls) if cls else []
        unknown = [k for k in [*options, *init] if k not in accepted]
        if cls is not None and unknown:
            return _unknown_option(f"{key}.{unknown[0]}", argv, classes, given["class_path"])
        value = given["class_path"]
    if "." in value and (why := import_problem(value)):
        return f"--{key} {value}: {why}"
    if m := re.search(r"does not correspond to a subclass of (\w+)", text):
        return f"--{key} {value} is not a {m[1]}; " + BASES.get(key, f"give a {m[1]}")
    return (
        f"--{key} {value}: no such class{did_you_mean(value, names[key])}\n"
        f"  --{key} takes one of: {', '.join(names[key])} (or a class path)"
    )


def _literal(text: str):
    """The Python literal ``text`` spells (a dict jsonargparse printed), or None."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def import_problem(path: str) -> str | None:
    """Why the class path ``pkg.module.Class`` does not import, or None when it does.

    The user's own error when their module fails to import (its type, message and line),
    told apart from a path that names no module or no class.
    """
    module, _, attr = path.rpartition(".")
    try:
        imported = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            return (
                f"no module named {err.name}; check the class path, or make its package "
                "importable (pip install -e ., or PYTHONPATH)"
            )
        return _import_failed(module, err)
    except Exception as err:  # the user's module raised while importing: theirs to see
        return _import_failed(module, err)
    if not hasattr(imported, attr):
        classes = [n for n, v in vars(imported).items() if isinstance(v, type)]
        return f"{module} has no {attr}{did_you_mean(attr, classes)}"
    return None


def _import_failed(module: str, err: Exception) -> str:
    """``importing M failed: ErrorType: message`` and, on a second line, where it was raised."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = f"importing {module} failed: {type(err).__name__}" + (f": {message}" if message else "")
    if isinstance(err, SyntaxError) and err.filename:
        return f"{line}\n  at {err.filename}:{err.lineno}"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<")]
    return f"{line}\n  at {frames[-1].filename}:{frames[-1].lineno}" if frames else line
