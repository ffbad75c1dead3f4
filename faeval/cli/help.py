"""What ``faeval --help`` and each command's ``--help`` say, and in which order.

LightningCLI's own help opens with 54 usage lines and Lightning's ~360 lines of Trainer
options, titled with class docstrings; faeval's own options came from line 436. Here each
command gets a short usage line and a description, and its options are grouped faeval's
first (the command's own, the method, the data, the diagnostics) and the Trainer's last.
"""

from __future__ import annotations

import argparse

from jsonargparse import DefaultHelpFormatter
from typing_extensions import override

MAIN = """\
faeval trains backprop and its alternatives (FA, DFA, EP, the bridges …) on one shared
backbone, measures per-layer diagnostics every epoch (‖h_l‖, ‖g_l‖, cos(a_l, g_l)), and
gives a verdict on whether a method really assigns credit to its deep layers.

  faeval fit --model DFA --data FashionMNIST   train; a per-layer table every epoch
  faeval fit --config configs/<experiment>.yaml
  tensorboard --logdir lightning_logs          the curves ("Custom Scalars" tab)
  faeval audit RUN                             the protocol's verdict on a saved run
  faeval test RUN                              test accuracy of a saved run (in RUN/eval/)
  faeval sweep SPEC.yaml --out DIR             methods × seeds × settings, locally or on Slurm
  faeval report DIR                            the sweep's verdicts, tables and figures

Runs go to lightning_logs/<data>/<method>/seed<S>/. `faeval COMMAND --help` for each."""

#: The one line each command gets in ``faeval --help``.
SUMMARIES = {
    "fit": "train a method, with the per-layer diagnostics every epoch",
    "validate": "the validation pass of a trained run, into RUN/eval/",
    "test": "test accuracy of a trained run, into RUN/eval/",
    "audit": "recompute every diagnostic of a saved run and print its verdict",
}

COMMANDS = {
    "fit": (
        "%(prog)s --model NAME --data NAME [--config FILE] [options]",
        "Train a method on a data set, measuring the diagnostics every epoch.\n\n"
        "  faeval fit --model DFA --data FashionMNIST --trainer.max_epochs 3\n"
        "  faeval fit --config configs/resmlp_d256_l4_dfa.yaml --seed_everything 1\n"
        "  faeval fit --model.help DFA      the method's own options\n"
        "Resume: faeval fit --config RUN/config.yaml --ckpt_path RUN/checkpoints/<file>.ckpt",
    ),
    "audit": (
        "%(prog)s RUN_OR_CHECKPOINT [options]",
        "Recompute every diagnostic of a saved run and print its verdict.\n\n"
        "  faeval audit lightning_logs/FashionMNIST/DFA/seed0\n"
        "  faeval audit RUN --frozen RUN_OF_FROZENBLOCKS      (d) against a given baseline\n"
        "  faeval audit RUN --train_frozen true               or train the baseline\n"
        "Writes <checkpoint>.audit.json and .audit.md beside the checkpoint.",
    ),
    "test": (
        "%(prog)s RUN_OR_CHECKPOINT [options]",
        "Test accuracy of a trained run on its test split, written to RUN/eval/test-*/; the "
        "run itself is left as it was.",
    ),
    "validate": (
        "%(prog)s RUN_OR_CHECKPOINT [options]",
        "The validation pass of a trained run (faeval validates on the test split), written "
        "to RUN/eval/validate-*/; the run itself is left as it was.",
    ),
}

#: Titles of the option groups, by jsonargparse's group key.
TITLES = {
    "model": "The method: --model NAME (--model.help NAME lists its own options)",
    "data": "The data: --data NAME (--data.help NAME lists its own options)",
    "diagnostics": "Per-epoch diagnostics (faeval's Diagnostics callback)",
    "trainer": "Lightning's Trainer (--trainer.*; the Lightning docs describe each)",
}
#: Order of the groups in a help text: faeval's own first, Lightning's Trainer last.
ORDER = ("options", "command", "model", "data", "diagnostics", "linked", "trainer")


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, keeping the line breaks of the descriptions above."""

    @override
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return argparse.RawDescriptionHelpFormatter._fill_text(self, text, width, indent)


def parser_kwargs() -> dict:
    """LightningCLI's ``parser_kwargs``: the main parser's and each command's."""
    out: dict = {"prog": "faeval", "description": MAIN, "formatter_class": HelpFormatter}
    for command, (usage, description) in COMMANDS.items():
        out[command] = {
            "usage": usage,
            "description": description,
            "formatter_class": HelpFormatter,
        }
    return out


def summarize_commands(parser) -> None:
    """Puts ``SUMMARIES`` in the main help's list of commands (Lightning's say "Runs the full
    optimization routine")."""
    for action in parser._actions:
        for choice in getattr(action, "_choices_actions", []):
            name = choice.dest.split()[0] if choice.dest else choice.metavar
            if name in SUMMARIES:
                choice.help = SUMMARIES[name]


def hide_options(parser, keys) -> None:
    """Leaves the options ``keys`` (and their groups' ``--key.*``) out of ``parser``'s help;
    they are still accepted."""
    for action in parser._actions:
        dest = action.dest or ""
        if any(dest == key or dest.startswith(key + ".") for key in keys):
            action.help = argparse.SUPPRESS


def arrange_groups(parser) -> None:
    """Retitles the option groups, puts faeval's first, the Trainer's last, and drops the
    groups whose options are all hidden (``hide_options``)."""
    parser._action_groups[:] = [
        g
        for g in parser._action_groups
        if not g._group_actions or any(a.help != argparse.SUPPRESS for a in g._group_actions)
    ]
    keys = {id(group): key for key, group in getattr(parser, "groups", {}).items()}
    for group in parser._action_groups:
        key = keys.get(id(group))
        if key in TITLES:
            group.title = TITLES[key]

    def rank(group) -> int:
        key = keys.get(id(group))
        if key in ORDER:
            return ORDER.index(key)
        if group.title in ("options", "positional arguments"):
            return 0
        if group.title == "Linked arguments":
            return ORDER.index("linked")
        if group.title and group.title[0].isupper() and group.description is None:
            group.title = "Options of this command"  # was the command's docstring
        return ORDER.index("command")  # the command's own options (ckpt_path, audit's …)

    parser._action_groups.sort(key=rank)
