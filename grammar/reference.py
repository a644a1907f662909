"""The pure-Lark path: every line through the parser. Slow; the yardstick of the fast path.

It explains invalid lines everywhere, and the property tests compare the fast path with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .diagnostics import Diagnostic, diagnostic_from_lark
from .language import feedback_parser
from .semantics import CLEARED, visible

if TYPE_CHECKING:
    from lark import Tree


def parse_line(line_text: str, line_number: int) -> Tree | Diagnostic:
    """Parse one line (without its LF) with Lark: its tree, or why the grammar rejects it."""
    from lark.exceptions import UnexpectedToken

    try:
        return feedback_parser().parse(line_text)
    except UnexpectedToken as error:
        return diagnostic_from_lark(error, line_text, line_number)


def parse_with_lark(text: str) -> tuple[dict[str, str], list[Diagnostic]]:
    """Values and diagnostics of a whole text, one Lark parse per line."""
    values: dict[str, str] = {}
    diagnostics: list[Diagnostic] = []
    for line_number, line_text in enumerate(text.split("\n"), start=1):
        parsed = parse_line(line_text, line_number)
        if isinstance(parsed, Diagnostic):
            diagnostics.append(parsed)
        else:
            _apply_line(values, parsed)
    return visible(values), diagnostics


def _apply_line(values: dict[str, str], tree: Tree) -> None:
    """Run the statement of a parsed one-line text (feedback -> line -> statement?)."""
    (line,) = tree.children
    for statement in line.children:
        if statement.data == "assignment":
            keyword, value = statement.children
            values[str(keyword)] = str(value)
        elif statement.data == "clear_keyword":
            (keyword,) = statement.children
            values[str(keyword)] = CLEARED
        elif statement.data == "clear_all":
            values.clear()
