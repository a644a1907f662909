"""The reads of an SQL store: live tasks, published feedback, history. Reads never write.

History is walked a page at a time (keyset pagination), so no read stays open to block a
writer while a large output is printed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager

from taskwatcher.engine.errors import InvalidRequest, UnknownTask
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.records import Ended, Tally, Task, as_text, decode_feedback, typed
from taskwatcher.grammar.protocol import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Row = Mapping[str, Any]


class Cursor(Protocol):
    """What a statement's result is read for besides its rows."""

    rowcount: int


class Database(Protocol):
    """One connection to a backend, as the SQL store uses it (`sqlite_db`, `pg_db`).

    Statements mark parameters with `?`; rows map column names to values. The attributes and
    the locking and announcing methods are where the backends differ: sqlite serializes
    writers with one lock, PostgreSQL locks rows and names, and tells listeners of changes.
    """

    location: str  # what messages call the database: never a password
    #: Appended to a SELECT of rows the transaction will change or delete.
    for_update: str
    #: Appended to a SELECT of rows any of several hosts may take: rows taken are skipped.
    skip_locked: str

    def close(self) -> None: ...
    def check_still_there(self) -> None: ...
    def transaction(self) -> AbstractContextManager[float]: ...
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...
    def rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Row]: ...
    def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def lock_name(self, name: str) -> None:
        """Hold, until the transaction ends, the lock of a task name (the unique rule)."""

    def announce(self, kind: str, taskid: int) -> None:
        """Tell listeners, at commit, of a kill request ("kill") or of a change ("change")."""

    def notices(self) -> list[int]:
        """Ids of the tasks whose kill was announced since the last call (never waits)."""

    def notices_fileno(self) -> int | None:
        """Readable when a kill may have been announced; None: announcements are not heard."""

    def listen_for_kills(self, taskid: int) -> None: ...
    def pause_between_batches(self, started: float) -> None: ...
    def wait_for_change(self, timeout: float) -> bool: ...
    def recreate(self) -> None: ...


#: Columns whose record field has another name.
_TASK_FIELDS = {"id": "taskid", "is_unique": "unique"}


class SqlReads:
    """What every command may read; the writes build on it (`sql_store.SqlStore`)."""

    _db: Database

    def get_task(self, taskid: int) -> Task | None:
        """The live task, or None once it has finished (or never was)."""
        row = self._db.row("SELECT * FROM tasks WHERE id = ?", (taskid,))
        return None if row is None else task_from_row(row)

    def list_tasks(
        self, *, name: str | None = None, status: str | None = None, started: bool = False
    ) -> list[Task]:
        """Live tasks, oldest first; `started`: all but reservations (what housekeeping
        checks, so that none is read into a record for nothing)."""
        where, params = filters_clause(
            ("name = ?", name),
            ("status = ?", status),
            ("status <> ?", Status.RESERVED.value if started else None),
        )
        return [
            task_from_row(row)
            for row in self._db.rows(f"SELECT * FROM tasks{where} ORDER BY id", params)
        ]

    def live_count(self) -> int:
        return self._number("SELECT count(*) AS n FROM tasks")

    def history_count(self) -> int:
        return self._number("SELECT count(*) AS n FROM history")

    def load_feedback(self, taskid: int) -> dict[str, str]:
        """The live task's feedback as its supervisor last published it ({} before any)."""
        self._live(taskid)
        return self._published(taskid) or {}

    def live_feedback(self) -> dict[int, dict[str, str]]:
        """The published feedback of every live task that has some, by task id."""
        rows = self._db.rows("SELECT id, feedback FROM feedbacks")
        return {row["id"]: decode_feedback(row["feedback"]) or {} for row in rows}

    def history_of(self, taskid: int) -> Ended | None:
        """The history record of one finished task (of its last attempt), or None if it has
        not finished: a task between two attempts has rows in history, and is still live."""
        row = self._db.row(
            "SELECT * FROM history WHERE taskid = ? AND NOT EXISTS"
            " (SELECT 1 FROM tasks WHERE id = ?) ORDER BY attempt DESC, id DESC LIMIT 1",
            (taskid, taskid),
        )
        return None if row is None else typed(Ended, dict(row))

    def history(self, **filters: Any) -> list[Ended]:
        """Finished tasks, newest first: iter_history() as a list."""
        return list(self.iter_history(**filters))

    def iter_history(
        self,
        *,
        name: str | None = None,
        taskid: int | None = None,
        outcome: str | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int | None = None,
        page: int = 500,
        max_id: int | None = None,
    ) -> Iterator[Ended]:
        """Finished tasks, newest first (`since` inclusive, `before` exclusive, on endtime),
        fetched `page` rows at a time.

        For outputs too large to hold: each page is one short query that resumes after the
        last row seen (keyset pagination), so no read stays open between pages to block a
        writer. Only rows with an id up to `max_id` (default: the largest when the walk
        starts) are walked: rows archived meanwhile do not slip in, and a second walk given
        the first one's largest id sees the same rows.
        """
        if page < 1:
            raise InvalidRequest(f"a history page holds 1 row or more, not {page}")
        if max_id is None:
            max_id = self._number("SELECT coalesce(max(id), 0) AS n FROM history")
        where, params = filters_clause(
            ("taskname = ?", name),
            ("taskid = ?", taskid),
            ("outcome = ?", outcome),
            ("endtime >= ?", since),
            ("endtime < ?", before),
            ("id <= ?", max_id),
        )
        left = float("inf") if limit is None else limit
        after: tuple[Any, ...] = ()
        while left > 0:
            size = min(page, left)
            rows = self._history_page(where, params, size, after)
            yield from (typed(Ended, dict(row)) for row in rows)
            if len(rows) < size:
                return
            left -= size
            after = (rows[-1]["endtime"], rows[-1]["id"])

    def history_tally(self, since: float) -> list[Tally]:
        """Per name and outcome: how many ended at or after `since`, and when the last of
        them ended over the whole history (monitoring's "last success" needs no window).
        No name and the empty name are one name here, as monitoring labels show them.

        Two grouped reads of the `history_tally` index, not a walk of the rows: a scrape
        every 15 s of a history of 100,000 rows must stay cheap.
        """
        group = " GROUP BY taskname, outcome"
        # Only numbers are times: an edited row may hold text, which sqlite sorts after them.
        timed = "endtime + 0 = endtime"
        counted: dict[tuple[str, str], int] = {}
        for row in self._db.rows(
            "SELECT taskname, outcome, count(*) AS n FROM history"
            f" WHERE endtime >= ? AND {timed}{group}",
            (since,),
        ):
            key = _tally_key(row)
            counted[key] = counted.get(key, 0) + int(row["n"])
        last: dict[tuple[str, str], float] = {}
        for row in self._db.rows(
            f"SELECT taskname, outcome, max(endtime) AS last FROM history WHERE {timed}{group}"
        ):
            key = _tally_key(row)
            last[key] = max(last.get(key, row["last"]), row["last"])
        return [
            Tally(name, outcome, counted.get((name, outcome), 0), float(ended))
            for (name, outcome), ended in sorted(last.items())
        ]

    def wait_for_change(self, timeout: float) -> bool:
        """True once another connection may have committed since the previous call, False
        after `timeout` seconds (sqlite: the file is watched without a lock; PostgreSQL: the
        changes are announced to listeners)."""
        return self._db.wait_for_change(timeout)

    def _history_page(
        self, where: str, params: tuple[Any, ...], size: int, after: tuple[Any, ...]
    ) -> Sequence[Row]:
        """One page of history, newest first, after the (endtime, id) `after` if given.

        `(endtime, id) < (?, ?)` means `endtime < ? OR (endtime = ? AND id < ?)`; written as a
        row value, sqlite seeks the endtime index instead of scanning it from the top.
        """
        if after:
            where, params = f"{where} AND (endtime, id) < (?, ?)", (*params, *after)
        return self._db.rows(
            f"SELECT * FROM history{where} ORDER BY endtime DESC, id DESC LIMIT ?",
            (*params, size),
        )

    def _number(self, sql: str, params: Sequence[Any] = ()) -> int:
        """The one number a query names `n`."""
        row = self._db.row(sql, params)
        assert row is not None
        return int(row["n"])

    def _published(self, taskid: int) -> dict[str, str] | None:
        row = self._db.row("SELECT feedback FROM feedbacks WHERE id = ?", (taskid,))
        return None if row is None else decode_feedback(row["feedback"])

    def _live(self, taskid: int, *, locked: bool = False) -> Task:
        """The live task; UnknownTask, saying how it ended when it has, if there is none.

        `locked` inside a write: the row stays locked until the transaction ends, so two
        hosts cannot both archive, or grade, the same task.
        """
        lock = self._db.for_update if locked else ""
        row = self._db.row(f"SELECT * FROM tasks WHERE id = ?{lock}", (taskid,))
        if row is not None:
            return task_from_row(row)
        ended = self._db.row(
            "SELECT outcome FROM history WHERE taskid = ? ORDER BY attempt DESC, id DESC LIMIT 1",
            (taskid,),
        )
        if ended is None:
            raise UnknownTask(f"no task {taskid}")
        raise UnknownTask(f"task {taskid} has already ended ({ended['outcome']})")


def task_from_row(row: Row) -> Task:
    return typed(Task, {_TASK_FIELDS.get(key, key): row[key] for key in row.keys()})  # noqa: SIM118


def filters_clause(*conditions: tuple[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause from (condition, value) pairs, skipping values that are None."""
    chosen = [(clause, value) for clause, value in conditions if value is not None]
    if not chosen:
        return "", ()
    return " WHERE " + " AND ".join(clause for clause, _ in chosen), tuple(v for _, v in chosen)


def _tally_key(row: Row) -> tuple[str, str]:
    """A history group's name and outcome as monitoring labels them: text, no name as ""."""
    return as_text(row["taskname"] or ""), as_text(row["outcome"])
