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
from taskwatcher.engine.tasktree import CALM_LOOKS, MAX_POLL_INTERVAL, StopResult

#: Freeze-and-kill rounds after the grace period: each one also catches what forked since.
_KILL_ROUNDS = 5


def stop_leftovers(
    owner: Owner, grace: float, *, clock: Callable[[], float] = time.monotonic
) -> StopResult | None:
    """SIGTERM every proven process of the task; what is left after grace, freeze and kill.

    Returns None when nothing of the task was found, else the last signal needed and the
    pids that refused to be signalled.
    """
    denied: set[int] = set()
    found = _look(owner)
    if not found:
        return None
    _signal_all(owner, found, signal.SIGTERM, denied)
    if not _wait_gone(owner, denied, clock() + grace, clock):
        return StopResult(signal_name(signal.SIGTERM), tuple(sorted(denied)))
    for _ in range(_KILL_ROUNDS):
        frozen = _freeze(owner, denied, clock() + grace, clock)
        if not frozen:
            break
        _signal_all(owner, frozen, signal.SIGKILL, denied)
        _wait_gone(owner, denied, clock() + grace, clock)
    return StopResult(signal_name(signal.SIGKILL), tuple(sorted(denied)))


def _freeze(
    owner: Owner, denied: set[int], deadline: float, clock: Callable[[], float]
) -> list[int]:
    """SIGSTOP the task's processes until a look finds none running: a stopped process
    cannot fork, so one that keeps forking and exiting is caught whole. Returns them."""
    calm = 0
    while True:
        found = [pid for pid in owner.processes() if pid not in denied]
        running = [pid for pid in found if not _stopped(pid)]
        calm = 0 if running else calm + 1
        if calm >= CALM_LOOKS or clock() >= deadline:
            return found
        _signal_all(owner, running, signal.SIGSTOP, denied)
        time.sleep(0.001)


def _look(owner: Owner) -> list[int]:
    """The task's processes, looked for CALM_LOOKS times before saying there are none:
    /proc is not listed atomically, and a process forking meanwhile can slip through one."""
    for _ in range(CALM_LOOKS):
        if found := owner.processes():
            return found
        time.sleep(0.001)
    return []


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read()
    except OSError:
        return True
    return fields[fields.rindex(b")") + 2 : fields.rindex(b")") + 3] in (b"T", b"t", b"Z")


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
