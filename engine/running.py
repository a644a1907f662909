"""A launched task under supervision: its event sources in the loop, and stopping it.

The sources that hear the task itself (its output pipes, its notify socket) stay on while
it is being stopped, so a task that writes or notifies as it shuts down is heard, and never
blocked on a full pipe.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable

from taskwatcher.engine import loop, process
from taskwatcher.engine.capture import Capture
from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.feedbackfile import (
    FeedbackFile,
)
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.notify import Notifications, NotifySocket, task_member
from taskwatcher.engine.request import Heartbeat, LaunchRequest
from taskwatcher.engine.signals import SignalInbox
from taskwatcher.engine.sources import (
    ChildExit,
    FeedbackHeartbeat,
    FreeMemory,
    Health,
    KillNotices,
    KillRequests,
    LeaseRenewal,
    MaxRuntime,
    OutputPush,
    Reaper,
    Signals,
    Wakeups,
)
from taskwatcher.engine.stopping import StopReason
from taskwatcher.engine.supervision import Recorder
from taskwatcher.engine.taskrow import TaskRow
from taskwatcher.engine.wakeup import WakeSocket
from taskwatcher.grammar.datatype import datatype

log = get_logger(__name__)


@datatype(frozen=True)
class Listeners:
    """The sources that hear the task itself, kept on while it is being stopped, and what
    passes its output on to other hosts (not while stopping: the end carries the tail)."""

    notifications: Notifications
    max_runtime: MaxRuntime | None
    while_stopping: list[loop.Source]
    output_push: list[loop.Source]


def listeners_of(
    child: subprocess.Popen,
    notify: NotifySocket,
    recorder: Recorder,
    request: LaunchRequest,
    capture: Capture | None,
    pipes: tuple[int, ...],
    monotonic: Callable[[], float],
) -> Listeners:
    """The notify socket, the output pipes and the maximum runtime, as sources."""
    state = recorder.state
    max_runtime = (
        MaxRuntime(state, monotonic(), request.max_runtime) if request.max_runtime else None
    )
    notifications = Notifications(
        notify,
        recorder,
        task_member(child),
        beats=Heartbeat.NOTIFY in request.heartbeat,
        max_runtime=max_runtime,
    )
    if capture is not None:
        beat = recorder.output if Heartbeat.OUTPUT in request.heartbeat else None
        for task_fd, own_fd in zip(pipes, (1, 2), strict=False):
            capture.watch(task_fd, own_fd, beat)
    output = capture.sources if capture is not None else []
    push = capture is not None and state.row.store.many_hosts
    pushes: list[loop.Source] = [OutputPush(capture.tail, state.row)] if push else []
    # The lease is kept up while stopping takes its time (a grace of minutes, say).
    renewing = [LeaseRenewal(state.row)] if state.row.store.lease is not None else []
    return Listeners(notifications, max_runtime, [notifications, *output, *renewing], pushes)


def supervise(
    child: subprocess.Popen,
    inbox: SignalInbox,
    wake: WakeSocket,
    recorder: Recorder,
    feedback: FeedbackFile | None,
    request: LaunchRequest,
    listeners: Listeners,
    monotonic: Callable[[], float],
) -> None:
    """Run the loop over the task's event sources until the child exits or must be stopped."""
    state = recorder.state
    requests = KillRequests(state, monotonic())
    listen_for_kills(state.row)
    heartbeats = (
        [FeedbackHeartbeat(feedback, Heartbeat.FEEDBACK in request.heartbeat, recorder)]
        if feedback is not None
        else []
    )
    with process.ChildWatch(child) as child_watch:
        sources: list[loop.Source] = [
            ChildExit(child, child_watch, state),
            Signals(inbox, requests, state),
            Wakeups(wake, requests),
            KillNotices(state.row.store, state.row.taskid, requests),
            *listeners.output_push,
            *listeners.while_stopping,
            requests,
            *heartbeats,
            Health(recorder, heartbeats),
            recorder,
            Reaper(child),
            FreeMemory(monotonic()),
            *([listeners.max_runtime] if listeners.max_runtime is not None else []),
        ]
        loop.run(sources, lambda: state.over, monotonic)


def listen_for_kills(row: TaskRow) -> None:
    """Have the store announce kill requests of the task, where it can; without, the
    periodic look still reads them."""
    try:
        row.store.listen_for_kills(row.taskid)
    except StoreError as error:
        log.warning("task %s: %s (kill requests are read once a second)", row.taskid, error)


def stop_everything(
    child: subprocess.Popen,
    leader: process.ProcessIdentity | None,
    stop: StopReason | None,
    grace: float,
    idle: Callable[[float], object],
) -> process.StopResult | None:
    """Stop the task when asked, and in every case leave none of its processes behind;
    `idle` passes the waits (reading the task's output).

    Returns how stopping went, or None when nothing was left to stop.
    """
    stopped = None
    if leader is not None:
        first = stop.first_signal if stop else signal.SIGTERM
        if stop is not None or _may_have_left_some(child, leader):
            stopped = process.terminate_task(
                leader, child.pid, grace=grace, first=first, adopter=os.getpid(), idle=idle
            )
    child.wait()
    process.reap_adopted()
    return stopped


def _may_have_left_some(child: subprocess.Popen, leader: process.ProcessIdentity) -> bool:
    """Whether an ended task may have left processes: two system calls once the leader is
    reaped (`left_nothing`), the pass over /proc only when they cannot tell."""
    if child.poll() is not None and process.left_nothing(child.pid):
        return False
    return bool(process.remnants(leader, child.pid, adopter=os.getpid()))
