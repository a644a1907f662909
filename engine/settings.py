"""Settings taken from the environment, read here so every caller of the engine honours them."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from taskwatcher.engine.errors import InvalidRequest

#: Seconds a reservation may wait for its launch before it expires, unless the variable says.
DEFAULT_RESERVATION_TTL = 3600.0
TTL_VARIABLE = "TASKWATCHER_RESERVATION_TTL"


def reservation_ttl_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """$TASKWATCHER_RESERVATION_TTL in seconds, else the default; InvalidRequest if unusable."""
    configured = environ.get(TTL_VARIABLE)
    if configured is None:
        return DEFAULT_RESERVATION_TTL
    try:
        seconds = float(configured)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidRequest(f"${TTL_VARIABLE}: not a number of seconds above 0: {configured!r}")
    return seconds
