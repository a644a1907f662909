"""Loads feedback.lark once per process: the parser and the terminals everything else reuses.

Importing lark and loading the grammar costs 30-50 ms, and its memory stays with a supervisor
for the life of its task. The terminals Lark compiles are therefore shipped beside the
grammar (TERMINALS_FILE, with the digest of the grammar they were compiled from); a test
holds them equal to what Lark makes of the grammar, and `python -m taskwatcher.grammar.language`
writes them again after the grammar changed. A file that does not match the grammar (or
does not compile) just means asking Lark.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from . import jsoncodec
from .digest import sha256_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lark import Lark

GRAMMAR_FILE = "feedback.lark"
START_RULE = "feedback"


@functools.cache
def feedback_parser() -> Lark:
    """Build the LALR parser on first use: importing this module stays cheap."""
    from lark import Lark

    return Lark.open_from_package(__package__, GRAMMAR_FILE, start=START_RULE, parser="lalr")


TERMINALS_FILE = "feedback-terminals.json"


@functools.cache
def terminal_patterns(*, from_lark: bool = False) -> dict[str, str]:
    """Regular expressions of the grammar's terminals, as Lark compiled them, keyed by name.

    `from_lark` skips the shipped file, for a caller that found it unusable.
    """
    shipped = None if from_lark else shipped_patterns(_beside_grammar(TERMINALS_FILE))
    if shipped is not None:
        return shipped
    return lark_patterns()


def lark_patterns() -> dict[str, str]:
    """The terminals as Lark compiles them from the grammar now."""
    return {terminal.name: terminal.pattern.to_regexp() for terminal in feedback_parser().terminals}


def grammar_digest() -> str:
    """What the shipped terminals must have been compiled from: the grammar file's SHA-256."""
    return sha256_hex(_beside_grammar(GRAMMAR_FILE).read_bytes())


def shipped_patterns(path: Path) -> dict[str, str] | None:
    """The terminals a shipped file holds; None unless compiled from this very grammar."""
    try:
        shipped = jsoncodec.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(shipped, dict) or shipped.get("grammar") != grammar_digest():
        return None
    patterns = shipped.get("terminals")
    well_formed = isinstance(patterns, dict) and all(
        isinstance(name, str) and isinstance(regexp, str) for name, regexp in patterns.items()
    )
    return patterns if well_formed and patterns else None


def _beside_grammar(name: str) -> Path:
    """A file of this package, in the source folder itself when the package is linked there."""
    return Path(__file__).resolve().with_name(name)


def write_terminals() -> Path:
    """Compile the terminals with Lark and ship them beside the grammar; returns the file."""
    import orjson  # a maintainer's step, as Lark itself

    path = _beside_grammar(TERMINALS_FILE)
    shipped = {"grammar": grammar_digest(), "terminals": lark_patterns()}
    path.write_bytes(orjson.dumps(shipped, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path


if __name__ == "__main__":
    print(f"wrote {write_terminals()}", file=sys.stderr)
