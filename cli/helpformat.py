"""argparse formatters that find the terminal's width without importing shutil.

argparse builds a formatter for every option it adds, and each one asks shutil for the
width: shutil's import (archives, compression) costs every command milliseconds it needs
only to print help.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


class _TerminalWidth:
    """The width as shutil.get_terminal_size finds it, unless one is given."""

    def __init__(self, prog: str, **options: Any) -> None:
        options.setdefault("width", _terminal_columns() - 2)
        super().__init__(prog, **options)  # type: ignore[call-arg]


class HelpFormatter(_TerminalWidth, argparse.HelpFormatter):
    """argparse's default formatter."""


class RawDescriptionHelpFormatter(_TerminalWidth, argparse.RawDescriptionHelpFormatter):
    """argparse's formatter that keeps descriptions and epilogs as written."""


def _terminal_columns() -> int:
    """$COLUMNS, else the width of the terminal behind stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80
