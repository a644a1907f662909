"""Times as users type them: points (`2h` ago, `2026-11-28`, `2026-11-28T09:30`, unix seconds)
and lengths (`90m`, `7d`, seconds)."""

from __future__ import annotations

import argparse
import math
import re
import time
from collections.abc import Callable
from datetime import datetime

from taskwatcher.cli.common import decimal

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGO = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")


def parse_age(text: str) -> float:
    """argparse type: a length of time above zero, as `90m`, `7d` or seconds."""
    if match := _AGO.fullmatch(text):
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        seconds = decimal(text) or 0.0
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(
            f"not a length of time above 0: {text!r} (use e.g. 1h, 7d)"
        )
    return seconds


def parse_when(text: str, *, clock: Callable[[], float] = time.time) -> float:
    """A unix time from an age (`90m`, `7d`), an ISO date or date-time (local), or seconds."""
    if match := _AGO.fullmatch(text):
        return clock() - float(match[1]) * _UNITS[match[2]]
    seconds = decimal(text)
    if seconds is not None:
        if not math.isfinite(seconds):
            raise argparse.ArgumentTypeError(f"not a finite time: {text!r}")
        return seconds
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (use e.g. 2h, 7d, 2026-11-28 or 2026-11-28T09:30)"
        ) from None
