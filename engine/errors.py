"""Errors the task engine raises on purpose; the CLI turns each into one line and an exit code."""

from __future__ import annotations

from taskwatcher.grammar.errors import TaskwatcherError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from taskwatcher.engine.stopping import TaskEnd


class StoreError(TaskwatcherError):
    """The database is unusable: not sqlite, a newer schema, or a folder that cannot be written."""


class NoDatabase(StoreError, FileNotFoundError):
    """Nothing at the location named, and the command is not one that creates a database."""


class UnknownTask(TaskwatcherError, LookupError):
    """No live task has this id (never reserved, or already finished)."""


class TransitionNotAllowed(TaskwatcherError):
    """The task's life cycle does not allow this change from its current state."""


class NotReserved(TransitionNotAllowed):
    """The task exists but is no longer RESERVED, so it cannot be started or cancelled."""


class UniqueConflict(TaskwatcherError):
    """A live task already holds the name, and one of the two claims it exclusively."""

    def __init__(self, name: str, holder: int) -> None:
        super().__init__(f"name {name!r} is held by live task {holder}")
        self.name = name
        self.holder = holder


class LaunchError(TaskwatcherError):
    """The command could not be started; exit_code follows timeout(1): 126 or 127. `taskid`
    names the task once it has been recorded FAILED for it."""

    taskid: int | None = None

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class InvalidRequest(TaskwatcherError, ValueError):
    """The request cannot mean anything, e.g. a unique reservation without a name."""


class ReservationRequired(TaskwatcherError):
    """A task that writes feedback must be launched with a reserved task id."""


class FeedpathMissing(TaskwatcherError, FileNotFoundError):
    """The feedback folder given for a task does not exist."""


class FeedpathUnusable(TaskwatcherError):
    """The feedback folder or file cannot be made, or another user could tamper with it."""


class SupervisorUnusable(TaskwatcherError):
    """twrun cannot supervise here (too few file descriptors, no pipe or socket to be had)."""


class RowLost(TaskwatcherError):
    """A supervisor's row is no longer its own: gone, re-created, or in a replaced database."""


class NotRecorded(TaskwatcherError):
    """The task ended but its end could not be written to the database."""

    def __init__(self, message: str, end: TaskEnd) -> None:
        super().__init__(message)
        self.end = end


class NoFeedback(TaskwatcherError):
    """The task does not write a feedback file (or has not started yet)."""


class KillTimeout(TaskwatcherError, TimeoutError):
    """The task was asked to stop but had not ended when the wait ran out."""


class ForeignTask(TaskwatcherError):
    """The task runs on another host, whose supervisor no signal from here can reach."""


class LiveTasksExist(TaskwatcherError):
    """Re-initialising would drop live tasks, and dropping them was not asked for."""


class NotYourTask(TaskwatcherError, PermissionError):
    """The task's supervisor is gone and its processes belong to another user."""
