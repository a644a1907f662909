"""The pure-Lark path: every line through the parser. Slow; the yardstick of the fast path.

It explains invalid lines everywhere, and the property tests compare the fast path with it.
"""

from __future__ import annotations

from .diagnostics import Diagnostic, diagnostic_from_lark
from .language import feedback_parser
from .semantics import CLEARED, cap, visible

TYPE_CHECKING = False
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
    """Values and diagnostics of a whole text, one Lark parse per line, capped at the end."""
    values, recency, diagnostics = collect_with_lark(text)
    cap(values, recency)
    return visible(values), diagnostics


def collect_with_lark(text: str) -> tuple[dict[str, str], dict[str, int], list[Diagnostic]]:
    """Values (with cleared placeholders), their recency (the line of each keyword's last
    statement) and diagnostics of a whole text, uncapped."""
    values: dict[str, str] = {}
    recency: dict[str, int] = {}
    diagnostics: list[Diagnostic] = []
    for line_number, line_text in enumerate(text.split("\n"), start=1):
        parsed = parse_line(line_text, line_number)
        if isinstance(parsed, Diagnostic):
            diagnostics.append(parsed)
        else:
            _apply_line(values, recency, parsed, line_number)
    return values, recency, diagnostics


def _apply_line(
    values: dict[str, str], recency: dict[str, int], tree: Tree, line_number: int
) -> None:
    """Run the statement of a parsed one-line text (feedback -> line -> statement?); the line
    number is the recency of the keyword it sets or clears."""
    (line,) = tree.children
    for statement in line.children:
        if statement.data == "clear_all":
            values.clear()
            recency.clear()
        elif statement.data in ("assignment", "clear_keyword"):
            keyword, *value = map(str, statement.children)
            values[keyword] = value[0] if value else CLEARED
            recency[keyword] = line_number
