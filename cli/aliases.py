"""The original package's spellings, rewritten into twctl's subcommands before parsing.

Scripts written for it run unchanged. Two generations of spellings: the spec's flags in
place of a subcommand (`twctl --list`, `--kill 3`), and the later releases' command words
with a flag naming the operation (`twctl task --reserve`, `history --list`, `database
--initialize`). The output is twctl's own.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskwatcher.cli import EXIT_USAGE
from taskwatcher.cli.common import fail

#: The spec's flag spellings, each the alias of a subcommand.
ALIASES = {
    "--initialize": "init",
    "--update": "update",
    "--list": "list",
    "--reserve": "reserve",
    "--feedback": "feedback",
    "--history": "history",
    "--clear": "clear",
    "--kill": "kill",
    "--killall": "killall",
}

#: The later releases: a command word, then a flag naming the operation (the subcommand).
OPERATIONS = {
    "task": {
        "--reserve": "reserve",
        "--list": "list",
        "--kill": "kill",
        "--killall": "killall",
        "--feedback": "feedback",
    },
    "history": {"--list": "history", "--clear": "clear"},
    "database": {"--initialize": "init", "--update": "update"},
}
#: The operation flags that take a value (`--kill ID`): it becomes the subcommand's argument.
VALUED = {"--kill": "ID", "--killall": "NAME", "--feedback": "ID"}
#: `history --list` printed JSON; `--human` asked for the table, which is twctl's default.
HUMAN = "--human"


def expand_aliases(argv: Sequence[str]) -> list[str]:
    """Rewrite the original's spelling of an operation into its subcommand:
    `--kill 3` -> `kill 3`, `task --kill 3` -> `kill -- 3`, `history --list` -> `history --json`.
    """
    words = list(argv)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--db":
            index += 2
            continue
        if word in ALIASES:
            words[index] = ALIASES[word]
            break
        if word in OPERATIONS:
            return words[:index] + _operation(word, words[index + 1 :])
        if not word.startswith("-"):
            break
        index += 1
    return words


def _operation(group: str, rest: list[str]) -> list[str]:
    """`task --killall x --json` -> `killall --json -- x`; the first operation flag decides,
    and a second one is left for the subcommand to refuse."""
    if group == "history":
        human = HUMAN in rest
        rest = [word for word in rest if word != HUMAN]
        if "--list" in rest and not human:
            rest.append("--json")
    place = next((place for place, word in enumerate(rest) if _names_operation(group, word)), None)
    if place is None:
        if group == "history":
            return [group, *rest]  # twctl's own `history [--since ...]`
        fail(f"twctl {group}: give one of {_choices(group)}", EXIT_USAGE)
    flag, equals, value = rest.pop(place).partition("=")
    if flag in VALUED and not equals and place < len(rest) and not rest[place].startswith("-"):
        value = rest.pop(place)
    # After `--` the value stays an argument even if it starts with a dash.
    argument = ["--", value] if flag in VALUED and (equals or value) else []
    return [OPERATIONS[group][flag], *rest, *argument]


def _names_operation(group: str, word: str) -> bool:
    """`--list`, or `--kill=3` for a flag that takes a value."""
    flag, equals, _ = word.partition("=")
    return flag in OPERATIONS[group] and (not equals or flag in VALUED)


def _choices(group: str) -> str:
    spelled = [" ".join(filter(None, (flag, VALUED.get(flag)))) for flag in OPERATIONS[group]]
    return ", ".join(spelled[:-1]) + " or " + spelled[-1]
