"""The sqlite store: live tasks, their latest feedback, and the history of finished tasks.

Many launchers and twctl calls share one file, so every write is a short `BEGIN IMMEDIATE`
transaction (writers queue on the busy timeout instead of failing on a lock upgrade) and
starts by expiring stale reservations. Reads never write. Times come from an injectable clock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from taskwatcher.engine import schema
from taskwatcher.engine.errors import (
    InvalidRequest,
    NotReserved,
    StoreError,
    TransitionNotAllowed,
    UniqueConflict,
    UnknownTask,
)
from taskwatcher.engine.lifecycle import (
    ENDING_TRIGGERS,
    FINAL_STATUSES,
    Status,
    graded_from,
    step,
)
from taskwatcher.engine.locking import patiently
from taskwatcher.engine.records import (
    clean_row,
    decode_feedback,
    encode_command,
    history_record,
    storable,
    task_record,
)
from taskwatcher.engine.settings import busy_timeout, reservation_ttl_from_env
from taskwatcher.grammar.errors import TaskwatcherError

_STALE_RESERVATIONS = (
    "SELECT * FROM tasks WHERE status = 'RESERVED' AND reservetime <= ? ORDER BY id LIMIT ?"
)
#: Rows a bulk change touches per transaction, so that no writer waits long behind it
#: (about 10 ms a batch here; a task ending meanwhile waits one batch, not the whole change).
BATCH_ROWS = 1000
#: Stale reservations every write expires on the way; housekeep() takes the rest in batches.
_EXPIRED_PER_WRITE = 50

Clock = Callable[[], float]
Record = dict[str, Any]


class Store:
    """One open database: a single connection, opened once per command and closed at its end."""

    def __init__(
        self, connection: sqlite3.Connection, path: Path, clock: Clock, reservation_ttl: float
    ) -> None:
        self._db = connection
        self.path = path
        self._clock = clock
        self.reservation_ttl = reservation_ttl
        self.busy_timeout = busy_timeout()  # how long a statement waits for the lock
        self._journal = schema.JournalGuard(path)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        clock: Clock = time.time,
        reservation_ttl: float | None = None,
    ) -> Store:
        """Open (creating on first use) and upgrade the database; StoreError if it is unusable.

        Without `reservation_ttl`, $TASKWATCHER_RESERVATION_TTL or the default applies.
        """
        path = Path(path).absolute()  # every path stored or handed to a task is absolute
        ttl = reservation_ttl_from_env() if reservation_ttl is None else reservation_ttl
        return cls(schema.open_database(path), path, clock, ttl)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes --------------------------------------------------------------------------

    def reserve(
        self,
        name: str | None = None,
        *,
        unique: bool = False,
        info1: str | None = None,
        info2: str | None = None,
        info3: str | None = None,
    ) -> int:
        """Reserve a new task id; with `unique`, no other live task may hold the name.

        A live unique task also refuses non-unique reservations of its name.
        """
        if unique and not name:
            raise InvalidRequest("a unique reservation needs a name")
        with self._write() as now:
            self._check_name_free(name, unique=unique)
            return self._insert(
                "tasks",
                {
                    "name": name,
                    "info1": info1,
                    "info2": info2,
                    "info3": info3,
                    "status": Status.RESERVED,
                    "reservetime": now,
                    "lastupdate": now,
                    "is_unique": unique,
                },
            )

    def housekeep(self) -> list[Record]:
        """Expire reservations older than the time-to-live; returns their history records.

        Looks first without the write lock, so the common case (nothing stale) never waits
        behind other writers; many stale ones are expired a batch per transaction.
        """
        expired: list[Record] = []
        while self._rows(_STALE_RESERVATIONS, (self._stale_before(self._clock()), 1)):
            with self._transaction() as now:
                expired += self._expire_reservations(now, BATCH_ROWS)
        return expired

    def start(
        self,
        taskid: int,
        *,
        pid: int | None = None,
        name: str | None = None,
        info1: str | None = None,
        info2: str | None = None,
        info3: str | None = None,
        child_ctime: float | None = None,
        pgid: int | None = None,
        supervisor_pid: int | None = None,
        supervisor_ctime: float | None = None,
        host: str | None = None,
        timeout: float | None = None,
        has_feedback: bool = False,
        feedpath: str | Path | None = None,
        command: Sequence[str] | None = None,
        token_hash: str | None = None,
        uid: int | None = None,
    ) -> None:
        """Claim a reservation for a launched process: RESERVED -> RUNNING, exactly once.

        A given name or info replaces the reserved one; the name rule is checked again.
        """
        with self._write() as now:
            launch = {
                "pid": pid,
                "child_ctime": child_ctime,
                "pgid": pgid,
                "supervisor_pid": supervisor_pid,
                "supervisor_ctime": supervisor_ctime,
                "host": host,
                "timeout": timeout,
                "feedback": has_feedback,
                "feedpath": None if feedpath is None else str(feedpath),
                "command": encode_command(command),
                "token_hash": token_hash,
                "uid": uid,
                "starttime": now,
                "lastupdate": now,
            }
            claimed = self._row(
                "UPDATE tasks SET status = 'RUNNING', name = coalesce(?, name),"
                " info1 = coalesce(?, info1), info2 = coalesce(?, info2),"
                f" info3 = coalesce(?, info3), {', '.join(f'{key} = ?' for key in launch)}"
                " WHERE id = ? AND status = 'RESERVED' RETURNING name, is_unique",
                (name, info1, info2, info3, *launch.values(), taskid),
            )
            if claimed is None:
                row = self._live_row(taskid)
                raise NotReserved(f"task {taskid} is {row['status']}, not RESERVED")
            self._check_name_free(claimed["name"], unique=claimed["is_unique"], other_than=taskid)

    def set_child(self, taskid: int, pid: int, child_ctime: float | None, pgid: int) -> None:
        """Record the launched process of a task claimed by `start()` before it was spawned."""
        self._update_started(taskid, "pid = ?, child_ctime = ?, pgid = ?", pid, child_ctime, pgid)

    def set_status(self, taskid: int, status: Status | str) -> None:
        """Record the grade the supervisor's machine gave a started task.

        The table must allow it from the status recorded now, by heartbeats and ticks.
        """
        status = _status(status)
        with self._write() as now:
            current = self._live_row(taskid)["status"]
            if status not in graded_from(current):
                raise TransitionNotAllowed(
                    f"task {taskid} is {current}, not started: start it first"
                    if current == Status.RESERVED
                    else f"task {taskid} is {current}: grading cannot make it {status}"
                )
            self._touch_started(taskid, now, "status = ?", status)

    def record_heartbeat(
        self, taskid: int, when: float, feedback: dict[str, Any] | None = None
    ) -> None:
        """Remember the latest feedback-file change (the timer counts from it, never backwards)
        and, when given, the values the supervisor parsed from the file, in one transaction."""
        with self._write() as now:
            self._touch_started(
                taskid, now, "heartbeat = max(coalesce(heartbeat, ?), ?)", when, when
            )
            if feedback is not None:
                self._put_feedback(taskid, feedback, now)

    def request_kill(self, taskid: int, requester: str) -> Record:
        """Ask the task's supervisor to kill it; the first requester is the one remembered."""
        with self._write() as now:
            cursor = self._execute(
                "UPDATE tasks SET kill_request = coalesce(kill_request, ?),"
                " kill_requested_at = coalesce(kill_requested_at, ?), lastupdate = ?"
                " WHERE id = ? AND status != 'RESERVED'",
                (requester, now, now, taskid),
            )
            if cursor.rowcount == 0:
                raise self._not_started(taskid, "cancel the reservation instead")
            return task_record(self._live_row(taskid), now)

    def cancel_reservation(self, taskid: int, requester: str) -> Record:
        """End a reservation nobody will launch: it goes to history as EXPIRED."""
        with self._write() as now:
            row = self._live_row(taskid)
            if row["status"] != Status.RESERVED:
                raise NotReserved(f"task {taskid} is {row['status']}, not RESERVED")
            self._guard(row, Status.EXPIRED)
            return self._archive_row(
                row,
                outcome=Status.EXPIRED,
                endtime=now,
                termerror=f"reservation cancelled by {requester}",
                killed_by=requester,
            )

    def archive(
        self,
        taskid: int,
        *,
        outcome: Status | str,
        termsignal: str | None = None,
        termerror: str | None = None,
        exitcode: int | None = None,
        endtime: float | None = None,
        feedback: dict[str, Any] | None = None,
    ) -> Record:
        """Move a finished task to history in one transaction; returns its history record.

        Without `feedback`, the last saved feedback becomes the final one.
        """
        outcome = _status(outcome)
        if outcome not in FINAL_STATUSES:
            raise TransitionNotAllowed(f"task {taskid}: {outcome} is not a final outcome")
        with self._write() as now:
            row = self._live_row(taskid)
            self._guard(row, outcome)
            return self._archive_row(
                row,
                outcome=outcome,
                endtime=now if endtime is None else endtime,
                termsignal=termsignal,
                termerror=termerror,
                exitcode=exitcode,
                feedback=feedback,
                killed_by=row["kill_request"],
            )

    def save_feedback(self, taskid: int, feedback: dict[str, Any]) -> None:
        """Publish a live task's feedback, as its supervisor parsed it, for every reader."""
        with self._write() as now:
            self._live_row(taskid)
            self._put_feedback(taskid, feedback, now)

    def clear_history(
        self, before: float | None = None, *, progress: Callable[[int], None] | None = None
    ) -> int:
        """Delete history rows that ended before `before` (all without it); returns how many.

        In batches of BATCH_ROWS, each its own transaction, so tasks ending meanwhile are
        recorded between two batches. Not one transaction, then: interrupted, it leaves
        history consistent with part of the rows gone, and running it again finishes.
        `progress` hears the running total after each batch.
        """
        condition, params = ("", ()) if before is None else ("WHERE endtime < ?", (before,))
        batch = f"DELETE FROM history WHERE id IN (SELECT id FROM history {condition} LIMIT ?)"
        removed = 0
        while True:
            started = time.monotonic()
            with self._transaction():
                deleted = self._execute(batch, (*params, BATCH_ROWS)).rowcount
            removed += deleted
            if progress is not None and deleted:
                progress(removed)
            if deleted < BATCH_ROWS:
                return removed
            # sqlite's lock is not fair: a waiting writer retries after sleeping, so leave the
            # lock free as long as a batch held it, and the writer finds it free soon enough.
            time.sleep(time.monotonic() - started)

    def reinitialize(self) -> None:
        """Drop every table and start afresh; the caller decides whether live tasks may be lost.

        History is emptied in batches first, so the transaction that rebuilds the schema is
        short however long the history was.
        """
        self.clear_history()
        with self._transaction(), self._sqlite_errors():
            schema.recreate(self._db)

    # -- reads ---------------------------------------------------------------------------

    def get_task(self, taskid: int) -> Record | None:
        """The raw live row, every column, or None once the task has finished."""
        row = self._row("SELECT * FROM tasks WHERE id = ?", (taskid,))
        return None if row is None else clean_row(row)

    def list_tasks(
        self, *, name: str | None = None, status: Status | str | None = None
    ) -> list[Record]:
        """Live tasks, oldest first, with duration and timer as of now."""
        where, params = _filters(("name = ?", name), ("status = ?", status))
        rows = self._rows(f"SELECT * FROM tasks{where} ORDER BY id", params)
        now = self._clock()
        return [task_record(row, now) for row in rows]

    def history(
        self,
        *,
        name: str | None = None,
        outcome: Status | str | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int | None = None,
    ) -> list[Record]:
        """Finished tasks, newest first; `since` is inclusive, `before` exclusive (on endtime)."""
        filters = {"name": name, "outcome": outcome, "since": since, "before": before}
        return list(self.iter_history(**filters, limit=limit))

    def iter_history(
        self,
        *,
        name: str | None = None,
        outcome: Status | str | None = None,
        since: float | None = None,
        before: float | None = None,
        limit: int | None = None,
        page: int = 500,
        max_id: int | None = None,
    ) -> Iterator[Record]:
        """The records of history(), same order, fetched `page` rows at a time.

        For outputs too large to hold: each page is one short query that resumes after the
        last row seen (keyset pagination), so no read stays open between pages to block a
        writer. Only rows with an id up to `max_id` (default: the largest when the walk
        starts) are walked: rows archived meanwhile do not slip in, and a second walk given
        the first one's largest id sees the same rows.
        """
        if page < 1:
            raise InvalidRequest(f"a history page holds 1 row or more, not {page}")
        if max_id is None:
            max_id = self._rows("SELECT coalesce(max(id), 0) FROM history")[0][0]
        where, params = _filters(
            ("taskname = ?", name),
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
            yield from map(history_record, rows)
            if len(rows) < size:
                return
            left -= size
            after = (rows[-1]["endtime"], rows[-1]["id"])

    def _history_page(
        self, where: str, params: tuple[Any, ...], size: int, after: tuple[Any, ...]
    ) -> list[sqlite3.Row]:
        """One page of history, newest first, after the (endtime, id) `after` if given.

        `(endtime, id) < (?, ?)` means `endtime < ? OR (endtime = ? AND id < ?)`; written as a
        row value, sqlite seeks the endtime index instead of scanning it from the top.
        """
        if after:
            where, params = f"{where} AND (endtime, id) < (?, ?)", (*params, *after)
        return self._rows(
            f"SELECT * FROM history{where} ORDER BY endtime DESC, id DESC LIMIT ?",
            (*params, size),
        )

    def history_of(self, taskid: int) -> Record | None:
        """The history record of one finished task, or None if it has not finished."""
        row = self._row("SELECT * FROM history WHERE taskid = ?", (taskid,))
        return None if row is None else history_record(row)

    def load_feedback(self, taskid: int) -> dict[str, Any]:
        """The live task's feedback as its supervisor last published it ({} before any)."""
        if self._row("SELECT id FROM tasks WHERE id = ?", (taskid,)) is None:
            raise self._unknown(taskid)
        return self._saved_feedback(taskid) or {}

    def live_feedback(self) -> dict[int, dict[str, Any]]:
        """The published feedback of every live task that has some, by task id."""
        rows = self._rows("SELECT id, feedback FROM feedbacks")
        return {row["id"]: decode_feedback(row["feedback"]) or {} for row in rows}

    def live_count(self) -> int:
        return self._rows("SELECT count(*) FROM tasks")[0][0]

    # -- internals -----------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[float]:
        """A short write transaction; BEGIN IMMEDIATE takes the write lock up front.

        The clock is read once the lock is held, so a wait behind other writers does not
        date the change in the past.
        """
        self._execute("BEGIN IMMEDIATE")
        now = self._clock()
        try:
            yield now
            with self._sqlite_errors():  # busy at COMMIT keeps the transaction: try again
                patiently(lambda: self._db.execute("COMMIT"), self.busy_timeout)
        except BaseException:
            if self._db.in_transaction:  # sqlite already rolled back after some I/O errors
                self._execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[float]:
        """Every write first expires stale reservations: one indexed query when there are none."""
        with self._transaction() as now:
            self._expire_reservations(now, _EXPIRED_PER_WRITE)
            yield now

    @contextmanager
    def _sqlite_errors(self) -> Iterator[None]:
        """Database trouble mid-command (disk full, lock wait exhausted) becomes one StoreError."""
        try:
            yield
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {error}") from error

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; outside a transaction (BEGIN included) a busy lock is waited for.

        Inside one, the write lock is held already (BEGIN IMMEDIATE): no retry is needed.
        """
        params = _storable_params(params)
        with self._sqlite_errors():
            if self._db.in_transaction:
                return self._db.execute(sql, params)
            self._journal.check()  # a transaction starts: sqlite is about to read the header
            return patiently(lambda: self._db.execute(sql, params), self.busy_timeout)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._execute(sql, params).fetchall()

    def _row(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return self._execute(sql, params).fetchone()

    def _stale_before(self, now: float) -> float:
        return now - self.reservation_ttl

    def _expire_reservations(self, now: float, at_most: int) -> list[Record]:
        stale = [
            clean_row(row)
            for row in self._rows(_STALE_RESERVATIONS, (self._stale_before(now), at_most))
        ]
        for row in stale:
            self._guard(row, Status.EXPIRED)
        return [
            self._archive_row(
                row,
                outcome=Status.EXPIRED,
                endtime=(row["reservetime"] or now) + self.reservation_ttl,
                termerror=f"not launched within {self.reservation_ttl:g} s of its reservation",
            )
            for row in stale
        ]

    def _archive_row(
        self,
        row: sqlite3.Row | Record,
        *,
        outcome: Status,
        endtime: float,
        termsignal: str | None = None,
        termerror: str | None = None,
        exitcode: int | None = None,
        feedback: dict[str, Any] | None = None,
        killed_by: str | None = None,
    ) -> Record:
        """Copy a live row to history with how it ended, then delete it and its feedback."""
        row = clean_row(row)
        taskid = row["id"]
        if feedback is None:  # null for a task that published none
            feedback = self._saved_feedback(taskid)
        starttime = row["starttime"]
        kept = ("info1", "info2", "info3", "reservetime", "host", "pid", "timeout", "command")
        historyid = self._insert(
            "history",
            {
                "taskid": taskid,
                "taskname": row["name"],
                **{column: row[column] for column in kept},
                "termsignal": termsignal,
                "termerror": termerror,
                "exitcode": exitcode,
                "outcome": outcome,
                "starttime": starttime,
                "endtime": endtime,
                "duration": 0.0 if starttime is None else max(0.0, endtime - starttime),
                "feedback": orjson.dumps(feedback),
                "killed_by": killed_by,
            },
        )
        self._execute("DELETE FROM tasks WHERE id = ?", (taskid,))
        self._execute("DELETE FROM feedbacks WHERE id = ?", (taskid,))
        # Read back rather than RETURNING, which skips REAL affinity (10.0 would come back as 10).
        (inserted,) = self._rows("SELECT * FROM history WHERE id = ?", (historyid,))
        return history_record(inserted)

    def _insert(self, table: str, values: dict[str, Any]) -> int:
        """INSERT one row from a column -> value mapping; returns its id."""
        marks = ", ".join("?" * len(values))
        cursor = self._execute(
            f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks})", tuple(values.values())
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _update_started(self, taskid: int, assignment: str, *values: Any) -> None:
        """Update one started task in a transaction of its own."""
        with self._write() as now:
            self._touch_started(taskid, now, assignment, *values)

    def _touch_started(self, taskid: int, now: float, assignment: str, *values: Any) -> None:
        """Update one started task; a reservation or an unknown id is refused."""
        cursor = self._execute(
            f"UPDATE tasks SET {assignment}, lastupdate = ? WHERE id = ? AND status != 'RESERVED'",
            (*values, now, taskid),
        )
        if cursor.rowcount == 0:
            raise self._not_started(taskid, "start it first")

    def _put_feedback(self, taskid: int, feedback: dict[str, Any], now: float) -> None:
        self._execute(
            "INSERT INTO feedbacks (id, feedback, lastupdate) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET feedback = excluded.feedback,"
            " lastupdate = excluded.lastupdate",
            (taskid, orjson.dumps(feedback), now),
        )

    def _saved_feedback(self, taskid: int) -> dict[str, Any] | None:
        row = self._row("SELECT feedback FROM feedbacks WHERE id = ?", (taskid,))
        return None if row is None else decode_feedback(row["feedback"])

    def _check_name_free(
        self, name: str | None, *, unique: bool, other_than: int | None = None
    ) -> None:
        """The name rule: a unique claim needs the name unused, and a unique holder refuses all."""
        if name is None:
            return
        # Two shapes so each stops at once on an index: any holder, or the one unique holder.
        claimants = "" if unique else " AND is_unique"
        holder = self._row(
            f"SELECT id FROM tasks WHERE name = ?{claimants} AND id IS NOT ? ORDER BY id LIMIT 1",
            (name, other_than),
        )
        if holder is not None:
            raise UniqueConflict(name, holder["id"])

    def _guard(self, row: sqlite3.Row, outcome: Status) -> None:
        """Refuse, in the transaction that would make it, an end the table does not allow
        from the task's recorded status (COMPLETED for a reservation, EXPIRED once started)."""
        if outcome not in step(row["id"], row["status"], ENDING_TRIGGERS[outcome]):
            raise TransitionNotAllowed(
                f"task {row['id']} is {row['status']}: it cannot end {outcome}"
            )

    def _live_row(self, taskid: int) -> sqlite3.Row:
        row = self._row("SELECT * FROM tasks WHERE id = ?", (taskid,))
        if row is None:
            raise self._unknown(taskid)
        return row

    def _not_started(self, taskid: int, advice: str) -> TaskwatcherError:
        """The error for an operation meant for a started task that found none."""
        if self.get_task(taskid) is None:
            return self._unknown(taskid)
        return TransitionNotAllowed(f"task {taskid} is RESERVED, not started: {advice}")

    def _unknown(self, taskid: int) -> UnknownTask:
        """UnknownTask, saying how the task ended when it has."""
        ended = self._row("SELECT outcome FROM history WHERE taskid = ?", (taskid,))
        if ended is None:
            return UnknownTask(f"no task {taskid}")
        return UnknownTask(f"task {taskid} has already ended ({ended['outcome']})")


def _storable_params(params: Sequence[Any]) -> tuple[Any, ...]:
    """Every text bound to a statement in the one form the database keeps (records.storable)."""
    return tuple(storable(value) if isinstance(value, str) else value for value in params)


def _status(value: Status | str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise InvalidRequest(f"unknown status {value!r}") from None


def _filters(*conditions: tuple[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause from (condition, value) pairs, skipping values that are None."""
    chosen = [(clause, value) for clause, value in conditions if value is not None]
    if not chosen:
        return "", ()
    return " WHERE " + " AND ".join(clause for clause, _ in chosen), tuple(v for _, v in chosen)
