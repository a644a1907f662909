"""The sqlite schema, versioned with PRAGMA user_version and upgraded by forward-only steps.

Times are unix seconds stored as REAL (sub-second precision for heartbeats and durations).
The spec's columns keep their names; the columns after them serve the supervisor and twctl.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.locking import is_busy

_CREATE_V1 = (
    """
    CREATE TABLE tasks (
        id                INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused once archived
        name              TEXT,
        info1             TEXT,
        info2             TEXT,
        info3             TEXT,
        pid               INTEGER,
        status            TEXT NOT NULL DEFAULT 'RESERVED'
                          CHECK (status IN ('RESERVED', 'RUNNING', 'SILENT', 'STALLED')),
        feedback          INTEGER NOT NULL DEFAULT 0,          -- 1: it has written feedback
        reservetime       REAL NOT NULL,
        starttime         REAL,
        duration          REAL,                                -- spec column; computed on read
        lastupdate        REAL NOT NULL,
        timeout           REAL,
        is_unique         INTEGER NOT NULL DEFAULT 0,          -- 1: the task claims its name
        host              TEXT,
        supervisor_pid    INTEGER,
        supervisor_ctime  REAL,
        child_ctime       REAL,
        pgid              INTEGER,
        heartbeat         REAL,                                -- last heartbeat, any source
        feedpath          TEXT,
        command           TEXT,                                -- JSON argv
        kill_request      TEXT,                                -- who asked for the kill
        kill_requested_at REAL
    )
    """,
    "CREATE INDEX tasks_name ON tasks (name)",
    "CREATE UNIQUE INDEX tasks_unique_name ON tasks (name) WHERE is_unique",
    "CREATE INDEX tasks_reserved ON tasks (reservetime) WHERE status = 'RESERVED'",
    """
    CREATE TABLE feedbacks (
        id           INTEGER PRIMARY KEY,                      -- the live task's id
        feedback     BLOB NOT NULL,                            -- JSON object
        lastupdate   REAL NOT NULL,
        reader_state BLOB                                      -- where the reader stopped
    )
    """,
    """
    CREATE TABLE history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        taskid      INTEGER NOT NULL,
        taskname    TEXT,
        info1       TEXT,
        info2       TEXT,
        info3       TEXT,
        termsignal  TEXT,
        termerror   TEXT,
        starttime   REAL,                                      -- null: never started
        endtime     REAL NOT NULL,
        duration    REAL NOT NULL,
        feedback    BLOB NOT NULL,                             -- final JSON object
        exitcode    INTEGER,
        outcome     TEXT NOT NULL CHECK (outcome IN
                    ('COMPLETED', 'FAILED', 'TIMEOUT', 'KILLED', 'LOST', 'EXPIRED')),
        reservetime REAL,
        host        TEXT,
        pid         INTEGER,
        timeout     REAL,
        killed_by   TEXT,
        command     TEXT                                       -- JSON argv
    )
    """,
    "CREATE UNIQUE INDEX history_taskid ON history (taskid)",
    "CREATE INDEX history_name_end ON history (taskname, endtime)",
    "CREATE INDEX history_end ON history (endtime)",
    "CREATE INDEX history_outcome_end ON history (outcome, endtime)",
)

#: Version 2: what proves a process is the task's (its token's digest) and whose task it is;
#: feedback is published by the supervisor alone.
_OWNERSHIP_V2 = (
    "ALTER TABLE tasks ADD COLUMN token_hash TEXT",  # SHA-256 of the child's TASKWATCHER_TOKEN
    "ALTER TABLE tasks ADD COLUMN uid INTEGER",  # the supervisor's user id
    # Only the supervisor reads a feedback file now, keeping its reader in memory: the saved
    # reader state goes. Rebuilt rather than DROP COLUMN, which sqlite before 3.35 lacks.
    """
    CREATE TABLE feedbacks_v2 (
        id           INTEGER PRIMARY KEY,                      -- the live task's id
        feedback     BLOB NOT NULL,                            -- JSON object, as published
        lastupdate   REAL NOT NULL
    )
    """,
    "INSERT INTO feedbacks_v2 (id, feedback, lastupdate)"
    " SELECT id, feedback, lastupdate FROM feedbacks",
    "DROP TABLE feedbacks",
    "ALTER TABLE feedbacks_v2 RENAME TO feedbacks",
)

#: Version 3: the captured output: where its log is, and the end of it kept in history.
_OUTPUT_V3 = (
    "ALTER TABLE tasks ADD COLUMN logfile TEXT",  # null: the output is not captured
    "ALTER TABLE history ADD COLUMN logfile TEXT",
    "ALTER TABLE history ADD COLUMN output_tail TEXT",  # the last lines of the output
)

#: Version 4: what a task said of itself through sd_notify.
_NOTIFY_V4 = (
    "ALTER TABLE tasks ADD COLUMN ready REAL",  # when it sent READY=1
    "ALTER TABLE tasks ADD COLUMN stopping REAL",  # when it sent STOPPING=1
)

#: MIGRATIONS[n] upgrades a database from version n to n + 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_CREATE_V1, _OWNERSHIP_V2, _OUTPUT_V3, _NOTIFY_V4)
LATEST_VERSION = len(MIGRATIONS)
TABLES = ("tasks", "feedbacks", "history")


def prepare(connection: sqlite3.Connection, path: Path) -> None:
    """Check, choose the journal, migrate: each step may be run again after a busy lock."""
    check_usable(connection, path)
    _use_rollback_journal(connection, path)
    migrate(connection)


def check_usable(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse, before any write, a database this code cannot read or does not own."""
    # One statement, one snapshot: another opener may be creating the schema meanwhile.
    version, tables = connection.execute(
        "SELECT (SELECT user_version FROM pragma_user_version),"
        " (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%')"
    ).fetchone()
    if version > LATEST_VERSION:
        raise StoreError(
            f"{path}: written by a newer taskwatcher (schema version {version}, "
            f"this one knows up to {LATEST_VERSION})"
        )
    if version == 0 and tables:
        raise StoreError(f"{path}: not a taskwatcher database (unversioned, has other tables)")


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema to LATEST_VERSION; concurrent openers queue and only one upgrades."""
    if _user_version(connection) == LATEST_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        _upgrade(connection, _user_version(connection))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def recreate(connection: sqlite3.Connection) -> None:
    """Drop every table and build the latest schema, inside the caller's transaction.

    The task id sequence carries over: a supervisor still running from before, or a feedback
    file named after an old id, must never meet a new task with the same id.
    """
    (last_id,) = connection.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'tasks'"
    ).fetchone()
    for table in TABLES:
        connection.execute(f"DROP TABLE IF EXISTS {table}")
    _upgrade(connection, 0)
    connection.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('tasks', ?)", (last_id,))


def _use_rollback_journal(connection: sqlite3.Connection, path: Path) -> None:
    """A rollback journal (TRUNCATE), with every commit synced (synchronous = FULL).

    Not WAL: in WAL mode every connection maps the `-shm` file into memory, and a truncated
    or damaged `-shm` then kills the process with SIGBUS, which Python cannot catch; for a
    supervisor that would mean a healthy task killed with it. A rollback journal maps
    nothing: damaged files give errors, which the supervisor survives. A database in WAL
    (made by an older version) leaves it here; while another connection holds it in WAL it is
    refused.
    """
    try:
        mode = connection.execute("PRAGMA journal_mode = TRUNCATE").fetchone()[0]
    except sqlite3.OperationalError as error:
        if not is_busy(error):
            raise
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]  # held: kept as it is
    if mode == "wal":
        raise StoreError(
            f"{path}: in WAL mode and open elsewhere (an older taskwatcher?); "
            "run it again once that has ended"
        )
    connection.execute("PRAGMA synchronous = FULL")


def _upgrade(connection: sqlite3.Connection, version: int) -> None:
    for step in MIGRATIONS[version:]:
        for statement in step:
            connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {LATEST_VERSION}")


def _user_version(connection: sqlite3.Connection) -> int:
    return connection.execute("PRAGMA user_version").fetchone()[0]
