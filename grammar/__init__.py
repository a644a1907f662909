"""The feedback file language: grammar, parser, validator, reader and writer."""

from .diagnostics import Diagnostic
from .parser import parse_feedback, validate_feedback
from .reader import FeedbackReader, ReaderState
from .stream import MAX_LINE_BYTES
from .writer import FeedbackWriter

__all__ = [
    "MAX_LINE_BYTES",
    "Diagnostic",
    "FeedbackReader",
    "FeedbackWriter",
    "ReaderState",
    "parse_feedback",
    "validate_feedback",
]
