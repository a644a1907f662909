"""Loggers that cost nothing until a record is made: `logging` is imported for the first one.

A supervisor lives as long as its task and, unless asked for more, logs nothing but the odd
warning; importing and configuring `logging` in every one of them would cost some 5 ms of
start-up and its memory for hours. A command hands its logging set-up to `configure`; it
runs once, just before the first record reaches a real logger.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_pending: Callable[[], None] | None = None


def configure(setup: Callable[[], None], *, now: bool) -> None:
    """Run `setup` (which imports and configures `logging`) now, or before the first record.

    `now` when debug or info records are wanted: those are only made once `logging` is in.
    """
    global _pending
    _pending = None
    if now:
        setup()
    else:
        _pending = setup


class Logger:
    """The part of logging.Logger the engine uses: debug, info, warning."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Any = None

    def debug(self, message: str, *args: object) -> None:
        if "logging" in sys.modules:  # else nobody configured logging to show debug records
            self._real().debug(message, *args)

    def info(self, message: str, *args: object) -> None:
        if "logging" in sys.modules:
            self._real().info(message, *args)

    def warning(self, message: str, *args: object) -> None:
        self._real().warning(message, *args)

    def _real(self) -> Any:
        global _pending
        if _pending is not None:
            setup, _pending = _pending, None
            setup()
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger


def get_logger(name: str) -> Logger:
    """A logger for module `name`, as logging.getLogger(name) would give, made on first use."""
    return Logger(name)
