"""A process identity that survives PID reuse: a pid plus its create time.

The promise: a signal goes only to a process whose create time matches the record, through a
pidfd, so a recycled pid never receives a kill meant for a finished task.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import psutil

from taskwatcher.engine.childwatch import open_pidfd

#: psutil derives create times from clock ticks (1/100 s): equal within this means same start.
CREATE_TIME_TOLERANCE = 0.01


@dataclass(frozen=True)
class ProcessIdentity:
    """A pid plus its create time: what a record must match before anything is signalled."""

    pid: int
    create_time: float

    def __post_init__(self) -> None:
        if self.pid <= 0:  # kill(0) or kill(-1) would reach whole groups, the caller's included
            raise ValueError(f"not a process id: {self.pid}")

    @classmethod
    def of(cls, process: psutil.Process) -> ProcessIdentity:
        """The identity psutil captured for an already-looked-up process."""
        return cls(process.pid, process.create_time())


def identity_of(pid: int) -> ProcessIdentity | None:
    """The identity of whatever holds pid now (a zombie included: its pid is still taken)."""
    try:
        return ProcessIdentity.of(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return None


def is_same_process(identity: ProcessIdentity) -> bool:
    """True while the recorded process still runs: same create time and not yet a zombie."""
    try:
        process = psutil.Process(identity.pid)
        with process.oneshot():
            return (
                same_start(process.create_time(), identity.create_time)
                and process.status() != psutil.STATUS_ZOMBIE
            )
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # /proc mounted with hidepid: it exists, it may be the one
        return True


def signal_identity(identity: ProcessIdentity, sig: int) -> bool:
    """Send sig only if identity still runs; False when it is gone, a zombie, or a reused pid.

    The pidfd is opened before the create time is checked, so the signal reaches the process
    that was checked even if the pid is recycled in between. PermissionError propagates.
    """
    try:
        pidfd = open_pidfd(identity.pid)
    except ProcessLookupError:
        return False
    try:
        if not is_same_process(identity):
            return False
        if pidfd is None:
            os.kill(identity.pid, sig)
        else:
            signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def same_start(create_time: float, recorded: float) -> bool:
    return abs(create_time - recorded) <= CREATE_TIME_TOLERANCE
