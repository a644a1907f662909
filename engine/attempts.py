"""Between two attempts of a task: the wait before the next launch, still supervised.

The task is RETRYING and its supervisor still answers for it: a kill request (read from the
row once a second, or at once on a wake-up, SIGUSR1 or a database notification), a stop
signal to twrun, and on a database of many hosts the lease, renewed by every read of the
request, all end the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from taskwatcher.engine import loop
from taskwatcher.engine.machine import TaskState
from taskwatcher.engine.signals import SignalInbox
from taskwatcher.engine.sources import KillNotices, KillRequests, Signals, Wakeups
from taskwatcher.engine.stopping import StopReason
from taskwatcher.engine.supervision import Supervision
from taskwatcher.engine.taskrow import TaskRow
from taskwatcher.engine.wakeup import WakeSocket


def wait_to_retry(
    row: TaskRow,
    inbox: SignalInbox,
    wake: WakeSocket,
    seconds: float,
    monotonic: Callable[[], float] = time.monotonic,
) -> StopReason | None:
    """Wait `seconds` for the next attempt; returns why the task must end instead, or None
    once it is time to launch."""
    state = Supervision(TaskState(row.taskid), row, time.time)
    requests = KillRequests(state, monotonic())
    sources: list[loop.Source] = [
        Signals(inbox, requests, state),
        Wakeups(wake, requests),
        KillNotices(row.store, row.taskid, requests),
        requests,
    ]
    loop.run_for(sources, seconds, monotonic, lambda: state.stop is not None)
    return state.stop
