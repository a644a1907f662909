"""The feedback file language: grammar, parser, validator, reader and writer."""

from .diagnostics import Diagnostic
from .parser import parse_feedback, validate_feedback

__all__ = ["Diagnostic", "parse_feedback", "validate_feedback"]
