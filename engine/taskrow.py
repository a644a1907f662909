"""The supervisor's hold on its task's row: every write names the task's token.

While a task runs, others may pull the database from under its supervisor: delete or replace
the file, or recreate it with `twctl init --force`, after which a new reservation may even get
the same id. A supervisor that kept writing would then update, or archive, a stranger's task.
So every write goes through the store with the token's digest, which the store checks; once
it answers RowLost the row is lost for good and left alone, and the supervision goes on.
"""

from __future__ import annotations

from collections.abc import Callable

from taskwatcher.engine.errors import NotRecorded, RowLost, StoreError, TransitionNotAllowed
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.stopping import TaskEnd
from taskwatcher.engine.store import Store

log = get_logger(__name__)


class TaskRow:
    """Writes of one running task's row on behalf of its supervisor.

    Database errors are logged once each and never stop the supervision; `lost` says, once
    it is known, why the row can no longer be written at all.
    """

    def __init__(self, store: Store, taskid: int, token_hash: str) -> None:
        self.store = store
        self.taskid = taskid
        self.token_hash = token_hash
        self.lost: str | None = None
        self.answered = True  # whether the store answered the last call
        self._reported: set[str] = set()

    def write(self, update: Callable[..., object], *args: object) -> None:
        """Apply a store write that takes (taskid, token_hash, ...); failures are only logged."""
        self._attempt(update, self.taskid, self.token_hash, *args)

    def kill_request(self) -> str | None:
        """Who asked for the task to be killed, if anyone (and the row is still its own)."""
        return self._attempt(self.store.kill_request, self.taskid, self.token_hash)

    def archive(
        self, end: TaskEnd, feedback: dict[str, str] | None, output_tail: str | None = None
    ) -> None:
        """Move the row to history; NotRecorded, saying how the task ended, when that fails."""
        if self.lost is not None:
            raise not_recorded(end, self.lost)
        ending = end.ending(feedback, output_tail)
        try:
            self.store.archive(self.taskid, ending, token_hash=self.token_hash)
        except (RowLost, StoreError) as error:
            raise not_recorded(end, str(error)) from error
        except Exception as error:  # a damaged row: say how the task ended all the same
            raise not_recorded(end, f"unusable row in {self.store.location}: {error!r}") from error

    def retry(
        self,
        end: TaskEnd,
        feedback: dict[str, str] | None,
        output_tail: str | None,
        retry_at: float,
    ) -> bool:
        """Record the attempt that ended and keep the task live for the next one; False when
        the store refuses (a kill asked for, the row lost) or fails, and the task is then
        archived instead: an attempt is never launched without the last one recorded."""
        if self.lost is not None:
            return False
        try:
            ending = end.ending(feedback, output_tail)
            self.store.retry(self.taskid, self.token_hash, ending, retry_at)
        except TransitionNotAllowed:
            return False
        except RowLost as error:
            self.lost = str(error)
            return False
        except StoreError as error:
            self._warn(f"{error}; not retried")
            return False
        return True

    def relaunch(self, timeout: float | None) -> str | None:
        """Mark the next attempt started; who asked for a kill instead, if anyone. Whether
        the store answered is in `answered` (and `lost`), as for every write."""
        answer = self._attempt(self.store.relaunch, self.taskid, self.token_hash, timeout)
        return answer if isinstance(answer, str) else None

    def _attempt(self, action: Callable[..., object], *args: object) -> object:
        self.answered = False
        if self.lost is not None:
            return None
        try:
            answer = action(*args)
        except RowLost as error:
            self.lost = str(error)
            log.warning("task %s: %s; its end cannot be recorded", self.taskid, self.lost)
        except StoreError as error:
            self._warn(str(error))
        except Exception as error:  # a damaged row must never stop the supervision
            self._warn(f"unusable row in {self.store.location}: {error!r}")
        else:
            self.answered = True
            return answer
        return None

    def _warn(self, message: str) -> None:
        if message not in self._reported:
            self._reported.add(message)
            log.warning("task %s: %s (still supervising)", self.taskid, message)


def not_recorded(end: TaskEnd, reason: str) -> NotRecorded:
    """The one line twrun prints when the end it saw cannot go to history."""
    return NotRecorded(
        f"task {end.taskid} ended {end.outcome} (status {end.exit_code}) "
        f"but was not recorded: {reason}",
        end,
    )
