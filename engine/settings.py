"""Settings taken from the environment, read here so every caller of the engine honours them."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from taskwatcher.engine.errors import InvalidRequest

#: Seconds a reservation may wait for its launch before it expires, unless the variable says.
DEFAULT_RESERVATION_TTL = 3600.0
TTL_VARIABLE = "TASKWATCHER_RESERVATION_TTL"


#: How long a statement waits for the others before giving up. A rollback journal makes
#: readers wait for writers too: with 100 supervisors starting at once on 2 cores, some waited
#: over 10 s; 30 s lets them all queue.
DEFAULT_BUSY_TIMEOUT = 30.0
BUSY_TIMEOUT_VARIABLE = "TASKWATCHER_BUSY_TIMEOUT"


#: Seconds a supervisor's lease on its row lasts on a database of many hosts: a task whose
#: supervisor has not renewed it for that long is LOST.
DEFAULT_LEASE = 30.0
LEASE_VARIABLE = "TASKWATCHER_LEASE"


HOST_VARIABLE = "TASKWATCHER_HOST"


def host_id(environ: Mapping[str, str] = os.environ) -> str:
    """This host as tasks record it: $TASKWATCHER_HOST, else the host name. Cloned machines
    sharing a name need the variable, or each would take the other's tasks for its own."""
    return environ.get(HOST_VARIABLE) or os.uname().nodename  # what gethostname() returns


#: A supervisor renews its lease once a second: a shorter lease than this would run out
#: between two renewals of a healthy supervisor.
MIN_LEASE = 2.0


def lease_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """$TASKWATCHER_LEASE in seconds, else the default; InvalidRequest if unusable."""
    lease = _seconds_from_env(environ, LEASE_VARIABLE, DEFAULT_LEASE)
    if lease < MIN_LEASE:
        raise InvalidRequest(
            f"${LEASE_VARIABLE}: {lease:g} s is too short: at least {MIN_LEASE:g} s (a lease is"
            " renewed every second)"
        )
    return lease


def reservation_ttl_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """$TASKWATCHER_RESERVATION_TTL in seconds, else the default; InvalidRequest if unusable."""
    return _seconds_from_env(environ, TTL_VARIABLE, DEFAULT_RESERVATION_TTL)


def busy_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """$TASKWATCHER_BUSY_TIMEOUT in seconds, else the default; InvalidRequest if unusable."""
    return _seconds_from_env(environ, BUSY_TIMEOUT_VARIABLE, DEFAULT_BUSY_TIMEOUT)


def _seconds_from_env(environ: Mapping[str, str], variable: str, default: float) -> float:
    configured = environ.get(variable)
    if configured is None:
        return default
    try:
        seconds = float(configured)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidRequest(f"${variable}: not a number of seconds above 0: {configured!r}")
    return seconds
