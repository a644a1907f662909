"""The event sources of a running task's supervision.

Each source turns one kind of event into a change of the shared `Supervision`: a reason to
stop, a heartbeat, a health grade. Grading is a function of the last heartbeat (from any
source that gives heartbeats) and the clock; writing the row is the Recorder's alone
(`engine.supervision`).
"""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod

from taskwatcher.engine import process
from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.feedbackfile import FeedbackFile
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.memory import give_back_free_memory
from taskwatcher.engine.output import Tail
from taskwatcher.engine.signals import KILL_REQUEST_SIGNAL, SignalInbox
from taskwatcher.engine.stopping import StopReason
from taskwatcher.engine.store import Store
from taskwatcher.engine.supervision import HEARTBEAT_CHECK_INTERVAL, Recorder, Supervision
from taskwatcher.engine.taskrow import TaskRow
from taskwatcher.engine.wakeup import WAKE_PAUSE, WakeSocket

#: Seconds into a task before its supervisor gives back the memory its start-up freed.
SETTLE_SECONDS = 1.0


class ChildExit:
    """The child's pidfd: readable once it exited. Orphans the supervisor adopted as
    subreaper are reaped on the way, without touching the child's own exit status."""

    def __init__(self, child: subprocess.Popen, watch: process.ChildWatch, state: Supervision):
        self._child, self._watch, self._state = child, watch, state

    def fileno(self) -> int | None:
        return self._watch.fileno()

    def deadline(self, now: float) -> float | None:
        return None

    def handle(self, now: float) -> None:
        if self._child.poll() is not None:
            self._state.child_exited = True


class Periodic(ABC):
    """A timer source that looks at something once per HEARTBEAT_CHECK_INTERVAL, the first
    time at once; `look_now` brings the next look forward."""

    def __init__(self) -> None:
        self._next = 0.0

    def look_now(self) -> None:
        self._next = 0.0

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        return self._next

    def handle(self, now: float) -> None:
        self._next = now + HEARTBEAT_CHECK_INTERVAL
        self.look()

    @abstractmethod
    def look(self) -> None:
        """The periodic look itself."""


class Reaper(Periodic):
    """Collects adopted orphans that exited, about once a second."""

    def __init__(self, child: subprocess.Popen) -> None:
        super().__init__()
        self._child = child

    def look(self) -> None:
        process.reap_adopted(keep={self._child.pid})


class FreeMemory:
    """Gives the heap's free pages back once the task has run a while (SETTLE_SECONDS): by
    then the start-up's garbage is gone, and a task that ends at once never waits for it."""

    def __init__(self, now: float) -> None:
        self._when: float | None = now + SETTLE_SECONDS

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        return self._when

    def handle(self, now: float) -> None:
        self._when = None
        give_back_free_memory()


class KillRequests(Periodic):
    """The kill request on the row: read once a second, or at once when asked to.

    On a store with leases the read renews the lease too; a supervisor that could not renew
    it for the lease's length, or finds its row gone, stops its task: the other hosts already
    count it LOST.
    """

    def __init__(self, state: Supervision, now: float) -> None:
        super().__init__()
        self._state = state
        self._renewed = now  # the claim took the lease

    def handle(self, now: float) -> None:
        super().handle(now)
        lease, row = self._state.row.store.lease, self._state.row
        if lease is None:
            return
        if row.answered:
            self._renewed = now
        elif row.lost is not None or now - self._renewed >= lease:
            self._state.stop_for(StopReason.lease_lost(lease))

    def look(self) -> None:
        if requester := self._state.row.kill_request():
            self._state.stop_for(StopReason.requested(requester))


class LeaseRenewal(Periodic):
    """While the task is being stopped: the lease renewed once a second (by the read of the
    kill request, whose answer no longer matters), so a long grace does not make the other
    hosts call a task LOST that its supervisor is stopping."""

    def __init__(self, row: TaskRow) -> None:
        super().__init__()
        self._row = row

    def look(self) -> None:
        self._row.kill_request()


class KillNotices:
    """Kill requests announced by the store (PostgreSQL's NOTIFY): the request is read at
    once instead of at the next periodic look, which stays the guaranteed path."""

    def __init__(self, store: Store, taskid: int, requests: KillRequests) -> None:
        self._store, self._taskid, self._requests = store, taskid, requests

    def fileno(self) -> int | None:
        return self._store.notices_fileno()

    def deadline(self, now: float) -> float | None:
        return None

    def handle(self, now: float) -> None:
        try:
            heard = self._store.kill_notices()
        except StoreError:
            heard = [self._taskid]  # the connection broke: the look says what became of it
        if self._taskid in heard:
            self._requests.look_now()


class OutputPush(Periodic):
    """The last lines of the captured output, written to the row at most once a second for
    readers on other hosts (a store shared by many hosts; the log stays on this one)."""

    def __init__(self, tail: Tail, row: TaskRow) -> None:
        super().__init__()
        self._tail, self._row = tail, row
        self._pushed: str | None = None

    def look(self) -> None:
        text = self._tail.text()
        if text is not None and text != self._pushed:
            self._row.write(self._row.store.push_output, text)
            self._pushed = text


class Signals:
    """The signal pipe: a stop signal passed on to the task, SIGUSR1 to read the request."""

    def __init__(self, inbox: SignalInbox, requests: KillRequests, state: Supervision) -> None:
        self._inbox, self._requests, self._state = inbox, requests, state

    def fileno(self) -> int | None:
        return self._inbox.fileno

    def deadline(self, now: float) -> float | None:
        return None

    def handle(self, now: float) -> None:
        for signum in self._inbox.drain():
            if signum == KILL_REQUEST_SIGNAL:
                self._requests.look_now()
            else:
                self._state.stop_for(StopReason.by_signal(signum))


class Wakeups:
    """The wake socket: a datagram means read the kill request now. After one, the socket is
    left unpolled for WAKE_PAUSE: a flood (any local user may send some) costs little."""

    def __init__(self, wake: WakeSocket, requests: KillRequests) -> None:
        self._wake, self._requests = wake, requests
        self._muted_until: float | None = None

    def fileno(self) -> int | None:
        return None if self._muted_until is not None else self._wake.fileno()

    def deadline(self, now: float) -> float | None:
        return self._muted_until

    def handle(self, now: float) -> None:
        if self._muted_until is not None:
            self._muted_until = None  # the pause is over: poll the socket again
            return
        if self._wake.drain():
            self._requests.look_now()
            self._muted_until = now + WAKE_PAUSE


class FeedbackHeartbeat:
    """The feedback file: its content is the feedback and, when it is one of the task's
    heartbeat sources, its modification time a heartbeat."""

    def __init__(self, feedback: FeedbackFile, beats: bool, recorder: Recorder) -> None:
        self._feedback, self._beats, self._recorder = feedback, beats, recorder
        self._seen: float | None = None  # the last mtime seen, unix seconds
        self._last_look: float | None = None

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        return now if self._last_look is None else self._last_look + HEARTBEAT_CHECK_INTERVAL

    def handle(self, now: float) -> None:
        since_last_look = (
            HEARTBEAT_CHECK_INTERVAL if self._last_look is None else now - self._last_look
        )
        self._last_look = now
        mtime = self._feedback.mtime()  # a missing or deleted file is no heartbeat
        wall = self._recorder.state.wall()
        if mtime is not None and mtime != self._seen:
            self._seen = mtime
            if self._beats:
                self._recorder.heard(
                    heartbeat_on_monotonic(mtime, wall, now, since_last_look), mtime
                )
        if (values := self._feedback.changes(wall)) is not None:
            self._recorder.publish(values)


class Health:
    """The health clock: grades the task when its next grade is due, and stops it at the
    timeout. A task without a timeout has no deadline here. The heartbeat sources are asked
    for a fresh look first: a grade is never given on a heartbeat older than it has to be."""

    def __init__(self, recorder: Recorder, heartbeats: list[FeedbackHeartbeat]) -> None:
        self._recorder = recorder
        self._heartbeats = heartbeats

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        return self._recorder.state.health.next_deadline(now)

    def handle(self, now: float) -> None:
        for source in self._heartbeats:
            source.handle(now)
        state = self._recorder.state
        if state.health.tick(now) and state.health.state == Status.TIMEOUT:
            state.stop_for(StopReason.timeout(state.health.timeout))


class MaxRuntime:
    """The wall-clock limit of a task, whatever its heartbeats: timeout(1)'s meaning."""

    def __init__(self, state: Supervision, started: float, seconds: float) -> None:
        self._state, self._deadline, self._seconds = state, started + seconds, seconds

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        return self._deadline

    def handle(self, now: float) -> None:
        self._state.stop_for(StopReason.max_runtime(self._seconds))

    def extend(self, until: float) -> None:
        """The task asked for more time (sd_notify `EXTEND_TIMEOUT_USEC=`): at least `until`."""
        self._deadline = max(self._deadline, until)


def heartbeat_on_monotonic(
    mtime: float,
    wall_now: float,
    mono_now: float,
    since_last_look: float = HEARTBEAT_CHECK_INTERVAL,
) -> float:
    """Place a newly seen feedback mtime on the monotonic timeline the deadlines use.

    A new write happened after the previous look at the file, so when first seen it is at
    most that old: normally HEARTBEAT_CHECK_INTERVAL, longer after a pause of the supervisor
    (SIGSTOP, a suspended machine). Clamping its apparent age to that bounds what a step of
    the wall clock or an mtime in the future can do: neither kills nor shields a task, and a
    write made long ago during a pause is judged by its real age.
    """
    age = min(max(wall_now - mtime, 0.0), max(since_last_look, HEARTBEAT_CHECK_INTERVAL))
    return mono_now - age
