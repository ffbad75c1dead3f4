"""Short messages for command-line mistakes: the bad value, what is accepted, the way out.

jsonargparse reports a bad option as a multi-line dump of the type machinery ("Does not
validate against any of the Union subtypes…") behind a usage line. ``short_message`` turns
the common cases into one or two lines, with "did you mean" suggestions drawn from the
names and options faeval really has. Anything it does not recognise is passed on, trimmed.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterable

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
    if m := re.match(r"Option '([^']+)' is not accepted", text):
        return _unknown_option(_full_key(m[1], argv), argv, classes)
    if m := re.match(r'Parser key "([^"]+)":', text):
        key = _full_key(m[1], argv)
        nested = re.search(r"NestedArg\(key='([^']*)', val='(.*)'\)", text)
        if nested is None:
            return _bad_value(key, text, None, argv, names)
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
            return _bad_value(inner, last, value, argv, names)
    return text.splitlines()[0]


def _full_key(leaf: str, argv: list[str]) -> str:
    """The full dotted key of a leaf name jsonargparse reported, found on the command line."""
    for arg in argv:
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if key == leaf or key.endswith("." + leaf):
                return key
    return leaf


def _unknown_option(key: str, argv: list[str], classes) -> str:
    """``--model.backbone.d_hiden``: not an option of the chosen class; the closest that is."""
    prefix, _, leaf = key.rpartition(".")
    cls_name = option_value(argv, prefix) or DEFAULT_CLASS.get(prefix)
    cls = resolve_class(cls_name, classes(prefix)) if cls_name else None
    if cls is None:
        return f"--{key} is not an option; faeval fit --help lists them"
    accepted = [a for a in init_parameters(cls) if a not in LINKED]
    hint = did_you_mean(leaf, accepted)
    hint = hint.replace("did you mean ", f"did you mean --{prefix}.") if hint else ""
    return (
        f"--{key} is not an option of {cls.__name__}{hint}\n"
        f"  {cls.__name__} takes: " + ", ".join(f"--{prefix}.{a}" for a in accepted)
    )


def _bad_value(key: str, text: str, value: str | None, argv: list[str], names) -> str:
    """``--trainer.max_epochs abc``: the value, and the type or the names it should have."""
    given = re.search(r"(?:Given value|Got value): (.*)", text)
    if value is None:
        value = given[1].strip() if given else option_value(argv, key)
    if key in names:
        return (
            f"--{key} {value}: no such class{did_you_mean(str(value), names[key])}\n"
            f"  --{key} takes one of: {', '.join(names[key])} (or a class path)"
        )
    if "File does not exist" in text:
        return text.split(":", 1)[1].strip()
    expected = re.findall(r"Expected an? (?:<class '([\w.]+)'>|typing\.(Literal\[[^\]]*\]))", text)
    kinds = [a or b for a, b in expected if (a or b) not in ("NoneType",)]
    want = " or ".join(dict.fromkeys(kinds)) or "another value"
    return f"--{key} {value}: expected {want}"
