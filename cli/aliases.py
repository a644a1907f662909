"""The original package's flag spellings, each an alias of a twctl subcommand."""

from __future__ import annotations

from collections.abc import Sequence

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


def expand_aliases(argv: Sequence[str]) -> list[str]:
    """Rewrite the first spec flag (`--list`, `--kill 3`...) into its subcommand."""
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
        if not word.startswith("-"):
            break
        index += 1
    return words
