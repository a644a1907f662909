"""A process identity that survives PID reuse: a pid plus its create time.

The promise: a signal goes only to a process whose create time matches the record, through a
pidfd, so a recycled pid never receives a kill meant for a finished task.
"""

from __future__ import annotations

import os
import signal

from taskwatcher.engine.childwatch import open_pidfd
from taskwatcher.engine.procfs import ProcRow, proc_row, visible_row
from taskwatcher.grammar.datatype import datatype

#: Create times are counted in clock ticks (1/100 s): equal within this means same start.
CREATE_TIME_TOLERANCE = 0.01


@datatype(frozen=True)
class ProcessIdentity:
    """A pid plus its create time: what a record must match before anything is signalled."""

    pid: int
    create_time: float

    def __post_init__(self) -> None:
        if self.pid <= 0:  # kill(0) or kill(-1) would reach whole groups, the caller's included
            raise ValueError(f"not a process id: {self.pid}")

    @classmethod
    def of(cls, row: ProcRow) -> ProcessIdentity:
        return cls(row.pid, row.create_time)


def identity_of(pid: int) -> ProcessIdentity | None:
    """The identity of whatever holds pid now (a zombie included: its pid is still taken)."""
    row = visible_row(pid)
    return None if row is None else ProcessIdentity.of(row)


def current_row(identity: ProcessIdentity) -> ProcRow | None:
    """What /proc says of the recorded process now; None once it exited or its pid was reused.

    PermissionError when /proc is mounted with hidepid and the process is another user's.
    """
    row = proc_row(identity.pid)
    if row is None or not same_start(row.create_time, identity.create_time):
        return None
    return row


def is_same_process(identity: ProcessIdentity) -> bool:
    """True while the recorded process still runs: same create time and not yet a zombie."""
    try:
        row = current_row(identity)
    except PermissionError:  # /proc mounted with hidepid: it exists, it may be the one
        return True
    return row is not None and not row.zombie


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
