"""The SQL store: live tasks, their published feedback, and the history of finished tasks.

Implements `store.Store` over a `Database` (sqlite or PostgreSQL); the statements here are
written once for both, and what differs lives in the database classes. Many launchers and
twctl calls share one database: every write is a short transaction that starts by expiring
a few stale reservations, and every change of status is checked against the life-cycle table
in the transaction that makes it. A supervisor's writes name its token's digest in their
WHERE clause: a row that is no longer its own is never written (RowLost). Reads never write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from taskwatcher.engine.errors import (
    InvalidRequest,
    NotReserved,
    RowLost,
    TransitionNotAllowed,
    UniqueConflict,
    UnknownTask,
)
from taskwatcher.engine.lifecycle import ENDING_TRIGGERS, FINAL_STATUSES, Status, graded_from, step
from taskwatcher.engine.records import (
    Ended,
    Ending,
    Launch,
    Task,
    encode_command,
    typed,
)
from taskwatcher.engine.sql_reads import Database, SqlReads, filters_clause, task_from_row
from taskwatcher.grammar import jsoncodec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_STALE = "SELECT * FROM tasks WHERE status = 'RESERVED' AND reservetime <= ? ORDER BY id LIMIT ?"
#: Rows a bulk change touches per transaction, so that no writer waits long behind it
#: (about 10 ms a batch here; a task ending meanwhile waits one batch, not the whole change).
BATCH_ROWS = 1000
#: How long one batch of `clear` should hold the write lock: long enough that a commit's
#: syncs are a small part of it, short beside any busy timeout a writer waits with.
BATCH_SECONDS = 0.025
#: The bounds of a batch of `clear`, whatever its timing suggests.
BATCH_RANGE = (100, 20_000)
#: Stale reservations every write expires on the way; expire_reservations() takes the rest.
_EXPIRED_PER_WRITE = 50
#: Ids per `IN (...)` list: well under every backend's limit of parameters.
_IDS_PER_QUERY = 500


class SqlStore(SqlReads):
    """One open database: a single connection, opened once per command."""

    #: Seconds a supervisor's lease on its row lasts; None: the backend keeps no leases.
    lease: float | None = None
    #: Whether tasks of several hosts share the database (their supervisors push what
    #: readers elsewhere cannot read from the task's host: the output's last lines).
    many_hosts = False
    #: Whether the database was opened read-only, so that nothing can be written through it.
    read_only = False

    def __init__(self, db: Database, clock: Callable[[], float], reservation_ttl: float) -> None:
        self.location = db.location
        self.reservation_ttl = reservation_ttl
        self._clock = clock
        self._db = db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def now(self) -> float:
        """The store's clock: what durations and timers are computed against."""
        return self._clock()

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
        """A new task id; with `unique`, no other live task may hold the name.

        A live unique task also refuses non-unique reservations of its name.
        """
        with self._write() as now:
            return self._reserve(now, name, unique, info1=info1, info2=info2, info3=info3)

    def claim(self, taskid: int, launch: Launch) -> None:
        """RESERVED -> RUNNING under a supervisor, exactly once, before anything is launched.

        A given name or info replaces the reserved one; the name rule is checked again, the
        name locked before the row, in the order a reservation takes them.
        """
        with self._write() as now:
            self._claim(now, taskid, launch)

    def start(self, name: str, launch_of: Callable[[int], Launch], *, unique: bool = False) -> int:
        """A new task reserved and claimed at once, for a supervisor given no id: one write
        where a reservation and its claim take two, and none left behind when it fails.
        `launch_of(taskid)` is its launch (which names the task's files by its id)."""
        with self._write() as now:
            taskid = self._reserve(now, name, unique)
            self._claim(now, taskid, launch_of(taskid))
        return taskid

    def _reserve(self, now: float, name: str | None, unique: bool, **infos: str | None) -> int:
        if unique and not name:
            raise InvalidRequest("a unique reservation needs a name")
        self._check_name_free(name, unique=unique)
        values = {"name": name, "info1": None, "info2": None, "info3": None, **infos}
        values |= {"status": Status.RESERVED, "reservetime": now, "lastupdate": now}
        return self._insert("tasks", {**values, "is_unique": unique})

    def _claim(self, now: float, taskid: int, launch: Launch) -> None:
        reserved = self._db.row(
            "SELECT name, is_unique FROM tasks WHERE id = ? AND status = 'RESERVED'",
            (taskid,),
        )
        if reserved is None:
            raise NotReserved(f"task {taskid} is {self._live(taskid).status}, not RESERVED")
        name = reserved["name"] if launch.name is None else launch.name
        self._check_name_free(name, unique=reserved["is_unique"], other_than=taskid)
        values = {
            "supervisor_pid": launch.supervisor_pid,
            "supervisor_ctime": launch.supervisor_ctime,
            "host": launch.host,
            "timeout": launch.timeout,
            "feedpath": launch.feedpath,
            "logfile": launch.logfile,
            "command": encode_command(launch.command),
            "token_hash": launch.token_hash,
            "uid": launch.uid,
            "attempts": launch.attempts,
            "starttime": now,
            "lastupdate": now,
        }
        lease, lease_params = self._lease_renewal()
        claimed = self._db.row(
            "UPDATE tasks SET status = 'RUNNING', name = coalesce(?, name),"
            " info1 = coalesce(?, info1), info2 = coalesce(?, info2),"
            f" info3 = coalesce(?, info3), {', '.join(f'{key} = ?' for key in values)},"
            f" lease_until = {lease} WHERE id = ? AND status = 'RESERVED' RETURNING id",
            (
                launch.name, launch.info1, launch.info2, launch.info3,
                *values.values(), *lease_params, taskid,
            ),
        )  # fmt: skip
        if claimed is None:  # claimed or cancelled meanwhile (sqlite: never)
            raise NotReserved(f"task {taskid} is {self._live(taskid).status}, not RESERVED")
        self._db.announce("change", taskid)

    def set_child(self, taskid: int, token_hash: str, pid: int, ctime: float | None) -> None:
        """Record the process a supervisor launched for its claimed task (its own group)."""
        with self._owned(taskid, token_hash) as now:
            assignment = "pid = ?, child_ctime = ?, pgid = ?"
            self._update(taskid, token_hash, now, assignment, pid, ctime, pid)

    def grade(self, taskid: int, token_hash: str, status: Status | str) -> None:
        """Record the health the supervisor graded; the table must allow it from the status
        recorded, by heartbeats and ticks."""
        status = _status(status)
        with self._owned(taskid, token_hash) as now:
            current = self._live(taskid, locked=True).status
            if status not in graded_from(current):
                raise TransitionNotAllowed(
                    f"task {taskid} is {current}: grading cannot make it {status}"
                )
            self._update(taskid, token_hash, now, "status = ?", status)

    def heartbeat(
        self,
        taskid: int,
        token_hash: str,
        when: float | None,
        feedback: dict[str, str] | None = None,
    ) -> None:
        """The latest heartbeat (the timer counts from it, never backwards; None: none new)
        and, when given, the feedback the supervisor parsed, published for every reader and
        marking the task as one that has written feedback, in one transaction."""
        with self._owned(taskid, token_hash) as now:
            # The later of the two; a NULL heartbeat makes the comparison NULL: the new one.
            later = "heartbeat = CASE WHEN heartbeat > ? THEN heartbeat ELSE ? END"
            assignment = later if when is not None else ""
            if feedback is not None:
                assignment = ", ".join(filter(None, [assignment, "feedback = 1"]))
            beat = (when, when) if when is not None else ()
            self._update(taskid, token_hash, now, assignment or "heartbeat = heartbeat", *beat)
            if feedback is not None:
                self._publish(taskid, feedback, now)

    def note(self, taskid: int, token_hash: str, values: Mapping[str, float]) -> None:
        """What the task told its supervisor of itself: `ready`, `stopping` (wall times), a
        new heartbeat `timeout` (seconds)."""
        unknown = set(values) - _NOTES
        if unknown:
            raise InvalidRequest(f"task {taskid}: no such note: {', '.join(sorted(unknown))}")
        with self._owned(taskid, token_hash) as now:
            assignment = ", ".join(f"{column} = ?" for column in values)
            self._update(taskid, token_hash, now, assignment, *values.values())

    def push_output(self, taskid: int, token_hash: str, tail: str) -> None:
        """The last lines of the task's output, for readers on hosts without its log."""
        with self._owned(taskid, token_hash) as now:
            self._update(taskid, token_hash, now, "output_tail = ?", tail)

    def listen_for_kills(self, taskid: int) -> None:
        """Hear kill requests of the task as they are made (`kill_notices`), where the
        backend announces them."""
        self._db.listen_for_kills(taskid)

    def kill_notices(self) -> list[int]:
        """Ids of the tasks whose kill was announced since the last call; never waits."""
        return self._db.notices()

    def notices_fileno(self) -> int | None:
        """Readable when a kill may have been announced; None where none are."""
        return self._db.notices_fileno()

    def expire_leases(self) -> list[Ended]:
        """Archive the tasks whose supervisor's lease ran out as LOST: none without leases."""
        return []

    def unswept(self, host: str) -> list[Ended]:
        """Tasks of `host` another host archived LOST, whose leftovers nobody looked for."""
        return [
            typed(Ended, dict(row))
            for row in self._db.rows(
                "SELECT * FROM history WHERE host = ? AND NOT swept ORDER BY id", (host,)
            )
        ]

    def mark_swept(self, taskid: int) -> None:
        """The task's leftovers were looked for (and stopped) on its host."""
        with self._db.transaction():
            self._db.execute("UPDATE history SET swept = ? WHERE taskid = ?", (True, taskid))

    def kill_request(self, taskid: int, token_hash: str) -> str | None:
        """Who asked the supervisor to kill its task, if anyone; RowLost once not its own."""
        self._db.check_still_there()
        row = self._db.row(
            "SELECT * FROM tasks WHERE id = ? AND token_hash = ?", (taskid, token_hash)
        )
        if row is None:
            raise self._row_lost()
        return task_from_row(row).kill_request

    def request_kill(self, taskid: int, requester: str) -> Task:
        """Ask the task's supervisor to kill it; the first requester is the one remembered."""
        with self._write() as now:
            cursor = self._db.execute(
                "UPDATE tasks SET kill_request = coalesce(kill_request, ?),"
                " kill_requested_at = coalesce(kill_requested_at, ?), lastupdate = ?"
                " WHERE id = ? AND status != 'RESERVED'",
                (requester, now, now, taskid),
            )
            if cursor.rowcount == 0:
                self._live(taskid)  # UnknownTask, saying how it ended when it has
                raise TransitionNotAllowed(
                    f"task {taskid} is RESERVED, not started: cancel the reservation instead"
                )
            self._db.announce("kill", taskid)
            return self._live(taskid)

    def cancel_reservation(self, taskid: int, requester: str) -> Ended:
        """End a reservation nobody will launch: it goes to history as EXPIRED."""
        with self._write() as now:
            task = self._live(taskid, locked=True)
            if task.status != Status.RESERVED:
                raise NotReserved(f"task {taskid} is {task.status}, not RESERVED")
            ending = Ending(Status.EXPIRED, termerror=f"reservation cancelled by {requester}")
            return self._archive(task, ending, now, killed_by=requester)

    def archive(self, taskid: int, ending: Ending, *, token_hash: str | None = None) -> Ended:
        """Move a finished task to history in one transaction; returns its history record.

        With `token_hash` (its supervisor), only a row still its own is archived. Without
        feedback in `ending`, the last published feedback becomes the final one.
        """
        if _status(ending.outcome) not in FINAL_STATUSES:
            raise TransitionNotAllowed(f"task {taskid}: {ending.outcome} is not a final outcome")
        writing = self._write() if token_hash is None else self._owned(taskid, token_hash)
        with writing as now:
            task = self._live(taskid, locked=True)
            return self._archive(task, ending, now, killed_by=task.kill_request)

    def retry(self, taskid: int, token_hash: str, ending: Ending, retry_at: float) -> Ended:
        """The attempt running ended and another one follows: the attempt goes to history as
        it ended, and the task stays live, RETRYING, until its supervisor launches the next
        one (`relaunch`) at `retry_at` (wall time); returns the attempt's record.

        Refused (TransitionNotAllowed) after the last attempt, and once a kill was asked for:
        the supervisor then archives the task as it ended instead. Until the next attempt
        starts, the live row shows what this one last reported (its final feedback and the
        end of its output): readers on other hosts, and a record made if the task is killed
        or lost meanwhile, have it.
        """
        with self._owned(taskid, token_hash) as now:
            task = self._live(taskid, locked=True)
            step(taskid, task.status, "retry")
            if task.attempt >= task.attempts:
                raise TransitionNotAllowed(
                    f"task {taskid}: attempt {task.attempt} was its last of {task.attempts}"
                )
            if task.kill_request is not None:
                raise TransitionNotAllowed(f"task {taskid}: killed by {task.kill_request}")
            ended = self._to_history(task, ending, now)
            self._update(
                taskid,
                token_hash,
                now,
                "status = ?, attempt = attempt + 1, retry_at = ?, starttime = NULL,"
                " pid = NULL, pgid = NULL, child_ctime = NULL, heartbeat = NULL,"
                " ready = NULL, stopping = NULL, output_tail = ?",
                Status.RETRYING, retry_at, ended.output_tail,
            )  # fmt: skip
            if ending.feedback is not None:
                self._publish(taskid, ending.feedback, now)
            self._db.announce("change", taskid)
            return ended

    def relaunch(self, taskid: int, token_hash: str, timeout: float | None) -> str | None:
        """RETRYING -> RUNNING: the next attempt starts now, with the heartbeat `timeout` it
        was launched with, and nothing of the last one's feedback or output. When a kill was
        asked for meanwhile, nothing changes and the requester is returned, for the
        supervisor to end the task KILLED instead."""
        with self._owned(taskid, token_hash) as now:
            task = self._live(taskid, locked=True)
            step(taskid, task.status, "start")
            if task.kill_request is not None:
                return task.kill_request
            lease, lease_params = self._lease_renewal()
            self._update(
                taskid,
                token_hash,
                now,
                "status = ?, starttime = ?, timeout = ?, retry_at = NULL, feedback = ?,"
                f" output_tail = NULL, lease_until = {lease}",
                Status.RUNNING, now, timeout, 0, *lease_params,
            )  # fmt: skip
            self._db.execute("DELETE FROM feedbacks WHERE id = ?", (taskid,))
            self._db.announce("change", taskid)
            return None

    def expire_reservations(self) -> list[Ended]:
        """Expire reservations older than the time-to-live; returns their history records.

        Looks first without the write lock, so the common case (nothing stale) never waits
        behind other writers; many stale ones are expired a batch per transaction.
        """
        expired: list[Ended] = []
        while self._db.rows(_STALE, (self._clock() - self.reservation_ttl, 1)):
            with self._db.transaction() as now:
                batch = self._expire(now, BATCH_ROWS)
            expired += batch
            if not batch:  # all left are being archived by another host now
                return expired
        return expired

    def clear_history(
        self,
        before: float | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        logs: Callable[[list[tuple[int, str]]], None] | None = None,
        host: str | None = None,
    ) -> int:
        """Delete history rows that ended before `before` (all without it); returns how many.
        With `host` (a database of many hosts), rows with a log on another host's disk stay,
        for that host to clear: their logs would otherwise be left behind for good.

        In batches, each its own transaction holding the lock about BATCH_SECONDS
        (`next_batch_rows`), so tasks ending meanwhile are recorded between two batches. Not
        one transaction, then: interrupted, it leaves history consistent with part of the rows
        gone, and running it again finishes.
        `progress` hears the running total after each batch; `logs` the (taskid, logfile) of
        the batch's rows that had a log, once the batch is committed, so that the files go
        only with rows surely gone; a log that another attempt of the task still names (its
        live row, or another history row) is not among them.
        """
        condition, params = filters_clause(
            ("endtime < ?", before), ("(logfile IS NULL OR host IS NULL OR host = ?)", host)
        )
        batch = (
            f"DELETE FROM history WHERE id IN (SELECT id FROM history{condition} LIMIT ?)"
            " RETURNING taskid, logfile"
        )
        removed = 0
        rows = BATCH_ROWS
        while True:
            with self._db.transaction():
                began = time.monotonic()
                deleted = self._db.rows(batch, (*params, rows))
                kept = self._still_recorded([row["taskid"] for row in deleted if _text_log(row)])
            held = time.monotonic() - began
            removed += len(deleted)
            if progress is not None and deleted:
                progress(removed)
            if logs is not None and deleted:
                logs(
                    [
                        (row["taskid"], row["logfile"])
                        for row in deleted
                        if _text_log(row) and row["taskid"] not in kept
                    ]
                )
            if len(deleted) < rows:
                return removed
            self._db.pause_between_batches(began)
            rows = next_batch_rows(rows, held)

    def reinitialize(self) -> None:
        """Drop every table and start afresh; the caller decides whether live tasks may go.

        History is emptied in batches first, so the transaction that rebuilds the schema is
        short however long the history was. Task ids carry on: none is ever handed out twice.
        """
        self.clear_history()
        self._db.recreate()

    # -- internals -----------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[float]:
        """Every write first expires a few stale reservations: one indexed query when none."""
        with self._db.transaction() as now:
            self._expire(now, _EXPIRED_PER_WRITE)
            yield now

    @contextmanager
    def _owned(self, taskid: int, token_hash: str) -> Iterator[float]:
        """A supervisor's write: refused (RowLost) unless the row still holds its token, in
        the database file it opened."""
        self._db.check_still_there()
        with self._write() as now:
            if (
                self._db.row(
                    "SELECT 1 FROM tasks WHERE id = ? AND token_hash = ?", (taskid, token_hash)
                )
                is None
            ):
                raise self._row_lost()
            try:
                yield now
            except UnknownTask:  # archived by another host since the look: not ours any more
                raise self._row_lost() from None

    def _expire(self, now: float, at_most: int) -> list[Ended]:
        """Archive up to `at_most` stale reservations; those another host is archiving now
        are left to it."""
        stale = self._db.rows(_STALE + self._db.skip_locked, (now - self.reservation_ttl, at_most))
        expired = []
        for task in map(task_from_row, stale):
            ending = Ending(
                Status.EXPIRED,
                termerror=f"not launched within {self.reservation_ttl:g} s of its reservation",
                endtime=(task.reservetime or now) + self.reservation_ttl,
            )
            expired.append(self._archive(task, ending, now))
        return expired

    def _archive(
        self, task: Task, ending: Ending, now: float, *, killed_by: str | None = None
    ) -> Ended:
        """Copy a live task to history with how it ended, then delete it and its feedback."""
        ended = self._to_history(task, ending, now, killed_by=killed_by)
        self._db.execute("DELETE FROM tasks WHERE id = ?", (task.taskid,))
        self._db.execute("DELETE FROM feedbacks WHERE id = ?", (task.taskid,))
        self._db.announce("change", task.taskid)
        return ended

    def _to_history(
        self, task: Task, ending: Ending, now: float, *, killed_by: str | None = None
    ) -> Ended:
        """The history row of the task's current attempt, as it ended; returns it.

        Refused, in this transaction, when the table allows no such end from its status
        (COMPLETED for a reservation, EXPIRED once started).
        """
        outcome = _status(ending.outcome)
        if outcome not in step(task.taskid, task.status, ENDING_TRIGGERS[outcome]):
            raise TransitionNotAllowed(
                f"task {task.taskid} is {task.status}: it cannot end {outcome}"
            )
        feedback = ending.feedback if ending.feedback is not None else self._published(task.taskid)
        endtime = now if ending.endtime is None else ending.endtime
        # Without a tail of its own (found LOST, say): the last one pushed to the row.
        tail = task.output_tail if ending.output_tail is None else ending.output_tail
        started = task.starttime
        historyid = self._insert(
            "history",
            {
                "taskid": task.taskid, "taskname": task.name, "info1": task.info1,
                "info2": task.info2, "info3": task.info3, "reservetime": task.reservetime,
                "host": task.host, "pid": task.pid, "timeout": task.timeout,
                "command": encode_command(task.command), "termsignal": ending.termsignal,
                "termerror": ending.termerror, "exitcode": ending.exitcode, "outcome": outcome,
                "starttime": started, "endtime": endtime,
                "duration": 0.0 if started is None else max(0.0, endtime - started),
                "feedback": jsoncodec.dumps(feedback), "killed_by": killed_by,
                "logfile": task.logfile, "output_tail": tail,
                "token_hash": task.token_hash, "uid": task.uid, "attempt": task.attempt,
            },
        )  # fmt: skip
        # Read back rather than RETURNING, which skips REAL affinity (10.0 would come back as 10).
        (inserted,) = self._db.rows("SELECT * FROM history WHERE id = ?", (historyid,))
        return typed(Ended, dict(inserted))

    def _publish(self, taskid: int, feedback: dict[str, str], now: float) -> None:
        """The feedback every reader of the live task sees."""
        self._db.execute(
            "INSERT INTO feedbacks (id, feedback, lastupdate) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET feedback = excluded.feedback,"
            " lastupdate = excluded.lastupdate",
            (taskid, jsoncodec.dumps(feedback), now),
        )

    def _still_recorded(self, taskids: list[int]) -> set[int]:
        """Which of these tasks still have a row, live or in history: the attempts of a task
        share its log."""
        found: set[int] = set()
        for start in range(0, len(taskids), _IDS_PER_QUERY):
            chunk = taskids[start : start + _IDS_PER_QUERY]
            marks = ", ".join("?" * len(chunk))
            rows = self._db.rows(
                f"SELECT taskid FROM history WHERE taskid IN ({marks})"
                f" UNION SELECT id FROM tasks WHERE id IN ({marks})",
                (*chunk, *chunk),
            )
            found.update(row["taskid"] for row in rows)
        return found

    def _insert(self, table: str, values: Mapping[str, Any]) -> int:
        """INSERT one row from a column -> value mapping; returns its id."""
        marks = ", ".join("?" * len(values))
        inserted = self._db.row(
            f"INSERT INTO {table} ({', '.join(values)}) VALUES ({marks}) RETURNING id",
            tuple(values.values()),
        )
        assert inserted is not None
        return int(inserted["id"])

    def _row_lost(self) -> RowLost:
        """What a supervisor's write meets once its row is no longer its own."""
        return RowLost(f"its row is gone from {self.location}, or belongs to another task")

    def _lease_renewal(self) -> tuple[str, tuple[float, ...]]:
        """The assignment of lease_until when a supervisor claims its row: kept as it is
        where the backend keeps no leases."""
        return "lease_until", ()

    def _update(
        self, taskid: int, token_hash: str, now: float, assignment: str, *values: Any
    ) -> None:
        """A supervisor's update of its own row: the token's digest is in the WHERE clause."""
        cursor = self._db.execute(
            f"UPDATE tasks SET {assignment}, lastupdate = ? WHERE id = ? AND token_hash = ?",
            (*values, now, taskid, token_hash),
        )
        if cursor.rowcount == 0:
            raise self._row_lost()

    def _check_name_free(
        self, name: str | None, *, unique: bool, other_than: int | None = None
    ) -> None:
        """The name rule: a unique claim needs the name unused, and a unique holder refuses all.

        The name's lock is held from here to the commit, so two hosts cannot both find the name
        free and both take it.
        """
        if name is None:
            return
        self._db.lock_name(name)
        # Two shapes so each stops at once on an index: any holder, or the one unique holder.
        claimants = "" if unique else " AND is_unique"
        holder = self._db.row(
            f"SELECT id FROM tasks WHERE name = ?{claimants} AND id <> ? ORDER BY id LIMIT 1",
            (name, 0 if other_than is None else other_than),
        )
        if holder is not None:
            raise UniqueConflict(name, holder["id"])


def _text_log(row: Any) -> bool:
    """Whether a history row names a log as twrun records one: an integer id, a text path
    (an edited row may hold anything)."""
    return type(row["taskid"]) is int and isinstance(row["logfile"], str)


#: The columns `note` may set.
_NOTES = frozenset({"ready", "stopping", "timeout"})


def _status(value: Status | str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise InvalidRequest(f"unknown status {value!r}") from None


def next_batch_rows(rows: int, held: float) -> int:
    """The size of the next batch, after `rows` rows held the lock `held` seconds.

    A fixed count is the wrong unit: what a writer waits is time. On a fast disk 1000 rows
    take a few milliseconds, most of them the commit's syncs, and a large clear then spends
    its time committing; on a loaded machine the same rows may hold the lock far longer.
    Growth is at most fourfold a batch, so a misleading quick batch cannot overshoot much.
    """
    low, high = BATCH_RANGE
    wanted = rows * BATCH_SECONDS / max(held, 1e-6)
    return round(min(high, max(low, min(wanted, rows * 4))))
