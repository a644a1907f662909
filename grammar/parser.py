"""The public entry points on text: tolerant parsing and validation, both on the fast path."""

from __future__ import annotations

from .diagnostics import Diagnostic
from .fastpath import apply_framed, frame, matchers
from .positions import LineNumbers
from .reference import parse_line
from .semantics import cap, visible


def parse_feedback(text: str) -> dict[str, str]:
    """Values of a feedback text; invalid lines are skipped, so a half-written file still reads.

    Past the caps (semantics.MAX_KEYS, MAX_HELD_BYTES) the least recently set keys are dropped.
    """
    values: dict[str, str] = {}
    recency: dict[str, int] = {}
    apply_framed(values, recency, frame(text))
    cap(values, recency)
    return visible(values)


def validate_feedback(text: str) -> list[Diagnostic]:
    """Every line the grammar rejects, with its line, column and what was expected there."""
    return check_framed(frame(text), first_line=1)


def check_framed(framed: str, first_line: int) -> list[Diagnostic]:
    """Find invalid lines with the fast matcher, then let Lark explain each of them."""
    numbers = LineNumbers(framed, first_line - 1)
    diagnostics = []
    for match in matchers().invalid.finditer(framed):
        start = match.end()
        end = framed.find("\n", start)
        line_text = framed[start:] if end < 0 else framed[start:end]
        parsed = parse_line(line_text, numbers.at(start))
        if isinstance(parsed, Diagnostic):
            diagnostics.append(parsed)
    return diagnostics
