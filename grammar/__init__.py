"""The feedback file language: grammar, parser, validator, reader and writer.

The names below load their module on first use, so a command that only needs the errors
(every twctl and twrun start-up) does not pay for the parser.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .diagnostics import Diagnostic
    from .files import READ_CHUNK, open_regular
    from .parser import parse_feedback, validate_feedback
    from .reader import FeedbackReader, ReaderState
    from .semantics import MAX_HELD_BYTES, MAX_KEYS
    from .stream import MAX_LINE_BYTES, FeedbackStream
    from .writer import FeedbackWriter

_HOMES = {
    "Diagnostic": "diagnostics",
    "READ_CHUNK": "files",
    "open_regular": "files",
    "FeedbackStream": "stream",
    "parse_feedback": "parser",
    "validate_feedback": "parser",
    "FeedbackReader": "reader",
    "ReaderState": "reader",
    "MAX_HELD_BYTES": "semantics",
    "MAX_KEYS": "semantics",
    "MAX_LINE_BYTES": "stream",
    "FeedbackWriter": "writer",
}

__all__ = [
    "MAX_HELD_BYTES",
    "MAX_KEYS",
    "MAX_LINE_BYTES",
    "READ_CHUNK",
    "Diagnostic",
    "FeedbackReader",
    "FeedbackStream",
    "FeedbackWriter",
    "ReaderState",
    "open_regular",
    "parse_feedback",
    "validate_feedback",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
