"""Stopping what is left of a task whose supervisor is gone, found only by the task's token.

Nothing here trusts a pid from the database: the processes are looked for in /proc by their
token (see `ownership`), and each signal is sent through a pidfd after the proof is read again.
A process that cleared or rewrote its environment cannot be found this way.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from taskwatcher.engine.exitstatus import signal_name
from taskwatcher.engine.ownership import Owner, Sent, signal_proven
from taskwatcher.engine.process import MAX_POLL_INTERVAL, StopResult

#: SIGKILL rounds after the grace period: each one also catches what forked since the last.
_KILL_ROUNDS = 5


def stop_leftovers(
    owner: Owner, grace: float, *, clock: Callable[[], float] = time.monotonic
) -> StopResult | None:
    """SIGTERM every proven process of the task, SIGKILL what is left after grace.

    Returns None when nothing of the task was found, else the last signal needed and the
    pids that refused to be signalled.
    """
    denied: set[int] = set()
    found = owner.processes()
    if not found:
        return None
    _signal_all(owner, found, signal.SIGTERM, denied)
    if not _wait_gone(owner, denied, clock() + grace, clock):
        return StopResult(signal_name(signal.SIGTERM), tuple(sorted(denied)))
    for _ in range(_KILL_ROUNDS):
        remaining = [pid for pid in owner.processes() if pid not in denied]
        if not remaining:
            break
        _signal_all(owner, remaining, signal.SIGKILL, denied)
        _wait_gone(owner, denied, clock() + grace, clock)
    return StopResult(signal_name(signal.SIGKILL), tuple(sorted(denied)))


def _signal_all(owner: Owner, pids: list[int], sig: int, denied: set[int]) -> None:
    for pid in pids:
        if signal_proven(owner, pid, sig) is Sent.DENIED:
            denied.add(pid)


def _wait_gone(owner: Owner, denied: set[int], deadline: float, clock: Callable[[], float]) -> bool:
    """Wait until no signalled process of the task is left; True if some still are at deadline.

    A zombie no longer carries its environment, so it counts as gone.
    """
    pause = 0.001
    while any(pid not in denied for pid in owner.processes()):
        remaining = deadline - clock()
        if remaining <= 0:
            return True
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, MAX_POLL_INTERVAL)
    return False
