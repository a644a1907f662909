"""Loads feedback.lark once per process: the parser and the terminals everything else reuses."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lark import Lark

GRAMMAR_FILE = "feedback.lark"
START_RULE = "feedback"


@functools.cache
def feedback_parser() -> Lark:
    """Build the LALR parser on first use: importing this module stays cheap."""
    from lark import Lark

    return Lark.open_from_package(__package__, GRAMMAR_FILE, start=START_RULE, parser="lalr")


@functools.cache
def terminal_patterns() -> dict[str, str]:
    """Regular expressions of the grammar's terminals, as Lark compiled them, keyed by name."""
    return {terminal.name: terminal.pattern.to_regexp() for terminal in feedback_parser().terminals}
