"""The commands' logging set-up, kept apart so that `logging` is imported only when used."""

from __future__ import annotations

import logging
import sys


def to_stderr(prog: str, verbosity: int) -> None:
    """Warnings only by default; -v shows info, -vv debug.

    Records read `twctl: warning: message`, like the commands' own one-line errors.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrefixedFormatter(prog))
    logging.basicConfig(level=level, handlers=[handler])


class _PrefixedFormatter(logging.Formatter):
    """`prog: level: message`, the level in lower case as compilers and coreutils write it."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prog}: {record.levelname.lower()}: {record.getMessage()}"
