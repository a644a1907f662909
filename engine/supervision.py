"""What a task's event sources share, and the one writer of its row.

Sources report to the `Supervision` (a reason to stop, the health machine) and to the
`Recorder`, which writes the row: a new grade at once, heartbeats, feedback and the task's
own notes (ready, stopping, a new timeout) at most once per HEARTBEAT_CHECK_INTERVAL.
"""

from __future__ import annotations

from collections.abc import Callable

from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.machine import TaskState
from taskwatcher.engine.stopping import StopReason
from taskwatcher.engine.taskrow import TaskRow
from taskwatcher.grammar.datatype import datatype

#: The feedback file is looked at and the kill request read at least this often; also the
#: least time between two heartbeat writes of the row.
HEARTBEAT_CHECK_INTERVAL = 1.0


@datatype
class Supervision:
    """What the sources share about one running task. Times are monotonic, but `wall`."""

    health: TaskState
    row: TaskRow
    wall: Callable[[], float]
    stop: StopReason | None = None
    child_exited: bool = False
    errno: int | None = None  # what the task said (sd_notify ERRNO=) its failure would be

    @property
    def over(self) -> bool:
        return self.child_exited or self.stop is not None

    def stop_for(self, reason: StopReason) -> None:
        """The first reason to stop is the one kept."""
        if self.stop is None:
            self.stop = reason


class FeedbackMerge:
    """The feedback as published: the file's values, and the task's sd_notify `STATUS=` as
    key `status`. Between a `STATUS=` datagram and a `[status]` line of the file, the one
    seen later wins."""

    def __init__(self) -> None:
        self._file: dict[str, str] | None = None
        self._status: str | None = None
        self._status_is_latest = False

    def from_file(self, values: dict[str, str]) -> None:
        before = None if self._file is None else self._file.get("status")
        if values.get("status") != before:
            self._status_is_latest = False
        self._file = values

    def from_notify(self, status: str) -> None:
        self._status, self._status_is_latest = status, True

    def values(self) -> dict[str, str] | None:
        """None while neither the file nor the task said anything."""
        if not self._status_is_latest:
            return self._file
        return {**(self._file or {}), "status": self._status or ""}


class Recorder:
    """Writes the row: a new grade at once; heartbeats, feedback and notes at most once a
    second."""

    def __init__(self, state: Supervision) -> None:
        self.state = state
        self._graded: Status = Status.RUNNING  # the grade last written; start() wrote RUNNING
        self._beat: float | None = None
        self._beat_written: float | None = None
        self._feedback = FeedbackMerge()
        self._unpublished: dict[str, str] | None = None
        self._notes: dict[str, float] = {}
        self._last_write: float | None = None

    def heard(self, when: float, wall: float) -> None:
        """A heartbeat from any source: `when` on the monotonic clock, `wall` for the row."""
        self.state.health.beat(when)
        self._beat = wall

    def output(self, now: float) -> None:
        """The task wrote output, which counts as a heartbeat now."""
        self.heard(now, self.state.wall())

    def publish(self, values: dict[str, str]) -> None:
        """The feedback file's values changed."""
        self._feedback.from_file(values)
        self._unpublished = self._feedback.values()

    def status(self, text: str) -> None:
        """The task said how it is (sd_notify `STATUS=`)."""
        self._feedback.from_notify(text)
        self._unpublished = self._feedback.values()

    def note(self, **values: float) -> None:
        """What the task told of itself for the row: `ready`, `stopping` (wall times), a new
        `timeout` (seconds)."""
        self._notes.update(values)

    def final(self, values: dict[str, str] | None) -> dict[str, str] | None:
        """The feedback history keeps: the file's last values, merged as published."""
        if values is not None:
            self._feedback.from_file(values)
        return self._feedback.values()

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        if self._grade_changed():
            return now
        if self._beat == self._beat_written and self._unpublished is None and not self._notes:
            return None
        return now if self._last_write is None else self._last_write + HEARTBEAT_CHECK_INTERVAL

    def handle(self, now: float) -> None:
        row = self.state.row
        if self._grade_changed():
            self._graded = Status(self.state.health.state)
            row.write(row.store.grade, self._graded)
        due = self._last_write is None or now - self._last_write >= HEARTBEAT_CHECK_INTERVAL
        beat = self._beat if self._beat != self._beat_written else None
        if not due:
            return
        if beat is not None or self._unpublished is not None:
            row.write(row.store.heartbeat, beat, self._unpublished)
            self._beat_written, self._last_write, self._unpublished = self._beat, now, None
        if self._notes:
            row.write(row.store.note, self._notes)
            self._notes, self._last_write = {}, now

    def _grade_changed(self) -> bool:
        graded = self.state.health.state
        return graded != self._graded and graded != Status.TIMEOUT
