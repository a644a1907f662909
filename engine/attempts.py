"""Between two attempts of a task: the wait before the next launch, still supervised.

The task is RETRYING and its supervisor still answers for it: a kill request (read from the
row once a second, or at once on a wake-up, SIGUSR1 or a database notification), a stop
signal to twrun, a row that is no longer its own, and on a database of many hosts the lease,
renewed by every read of the request, all end the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from taskwatcher.engine import loop
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.machine import TaskState
from taskwatcher.engine.signals import SignalInbox
from taskwatcher.engine.sources import KillNotices, KillRequests, Signals, Wakeups
from taskwatcher.engine.stopping import StopReason
from taskwatcher.engine.supervision import HEARTBEAT_CHECK_INTERVAL, Supervision
from taskwatcher.engine.taskrow import TaskRow
from taskwatcher.engine.wakeup import WakeSocket


def relaunch_after(
    row: TaskRow,
    inbox: SignalInbox,
    wake: WakeSocket,
    seconds: float,
    timeout: float | None,
    monotonic: Callable[[], float] = time.monotonic,
) -> StopReason | None:
    """Wait `seconds`, then mark the next attempt started (with the heartbeat `timeout` it
    is launched with); returns why the task must end instead, or None once it may launch.

    What came in while the last attempt was being stopped (a signal, a wake-up) is heard
    first, whatever the delay. While the database cannot record the launch, nothing is
    launched: the wait goes on a second at a time, the lease still counted.
    """
    state = Supervision(TaskState(row.taskid), row, time.time)
    requests = KillRequests(state, monotonic())
    sources: list[loop.Source] = [
        Signals(inbox, requests, state),
        Wakeups(wake, requests),
        KillNotices(row.store, row.taskid, requests),
        requests,
    ]

    def over() -> bool:
        return state.stop is not None or row.lost is not None

    now = monotonic()
    for source in sources:  # one look at everything, even for a delay of 0
        source.handle(now)
    while not over():
        loop.run_for(sources, seconds, monotonic, over)
        if over():
            break
        requester = row.relaunch(timeout)
        if row.answered and row.lost is None:
            return None if requester is None else StopReason.requested(requester)
        seconds = HEARTBEAT_CHECK_INTERVAL
    if state.stop is None:  # the row is lost: what it says is not ours to write any more
        return StopReason(Status.LOST, f"its row was lost: {row.lost}")
    return state.stop
