"""The supervisor's hold on its task's row: every access first checks the row is still its own.

While a task runs, others may pull the database from under its supervisor: delete or replace
the file, or recreate it with `twctl init --force`, after which a new reservation may even get
the same id. A supervisor that kept writing would then update, or archive, a stranger's task.
So each access checks that the path still names the file opened at the start and that the row
still names this supervisor; once either fails the row is lost for good and left alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from taskwatcher.engine.errors import StoreError, TransitionNotAllowed, UnknownTask
from taskwatcher.engine.process import ProcessIdentity
from taskwatcher.engine.stopping import TaskEnd
from taskwatcher.engine.store import Store
from taskwatcher.grammar.errors import TaskwatcherError

log = logging.getLogger(__name__)


class NotRecorded(TaskwatcherError):
    """The task ended but its end could not be written to the database."""

    def __init__(self, message: str, end: TaskEnd) -> None:
        super().__init__(message)
        self.end = end


class TaskRow:
    """Reads and writes of one running task's row on behalf of its supervisor.

    Database errors are logged once each and never stop the supervision; `lost` says, once
    it is known, why the row can no longer be written at all.
    """

    def __init__(self, store: Store, taskid: int, supervisor: ProcessIdentity) -> None:
        self.store = store
        self.taskid = taskid
        self.supervisor = supervisor
        self._owner = (supervisor.pid, supervisor.create_time)
        self.lost: str | None = None
        self._database = _file_identity(store.path)
        self._reported: set[str] = set()

    def current(self) -> dict[str, Any] | None:
        """The row, or None when it cannot be read now or is no longer this supervisor's."""
        was_ours = self.lost is None
        row = self._read()
        if was_ours and self.lost is not None:
            log.warning("task %s: %s; its end cannot be recorded", self.taskid, self.lost)
        return row

    def write(self, update: Callable[..., object], *args: object) -> None:
        """Apply a store update to the row if it is still ours; a failure is only logged."""
        if self.current() is None:
            return
        try:
            update(self.taskid, *args)
        except (StoreError, UnknownTask, TransitionNotAllowed) as error:
            self._warn(str(error))
        except Exception as error:  # a damaged row must never stop the supervision
            self._warn(f"unusable row in {self.store.path}: {error!r}")

    def archive(self, end: TaskEnd, feedback: dict[str, str] | None) -> None:
        """Move the row to history; NotRecorded, saying how the task ended, when that fails."""
        self._read()
        if self.lost is not None:
            raise not_recorded(end, self.lost)
        archive(self.store, end, feedback)

    def _read(self) -> dict[str, Any] | None:
        """Check the file and the row, noting in `lost` why they are no longer ours."""
        if self.lost is None and _file_identity(self.store.path) != self._database:
            self.lost = f"{self.store.path} was deleted or replaced"
        if self.lost is not None:
            return None
        try:
            row = self.store.get_task(self.taskid)
        except StoreError as error:
            self._warn(str(error))
            return None
        if row is None:
            self.lost = f"its row is gone from {self.store.path}"
        elif (row["supervisor_pid"], row["supervisor_ctime"]) != self._owner:
            self.lost = f"its row in {self.store.path} now belongs to another task"
        return None if self.lost else row

    def _warn(self, message: str) -> None:
        if message not in self._reported:
            self._reported.add(message)
            log.warning("task %s: %s (still supervising)", self.taskid, message)


def archive(store: Store, end: TaskEnd, feedback: dict[str, str] | None) -> None:
    """Write a task's end to history; NotRecorded when the database refuses."""
    try:
        store.archive(
            end.taskid,
            outcome=end.outcome,
            termsignal=end.termsignal,
            termerror=end.termerror,
            exitcode=end.exit_code,
            endtime=end.endtime,
            feedback=feedback,
        )
    except (StoreError, UnknownTask) as error:
        raise not_recorded(end, str(error)) from error
    except Exception as error:  # a damaged row: say how the task ended all the same
        raise not_recorded(end, f"unusable row in {store.path}: {error!r}") from error


def not_recorded(end: TaskEnd, reason: str) -> NotRecorded:
    """The one line twrun prints when the end it saw cannot go to history."""
    return NotRecorded(
        f"task {end.taskid} ended {end.outcome} (status {end.exit_code}) "
        f"but was not recorded: {reason}",
        end,
    )


def _file_identity(path: os.PathLike[str]) -> tuple[int, int] | None:
    """(device, inode) of the file the path names now, None when nothing is there."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino
