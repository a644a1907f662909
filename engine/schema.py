"""The schema of both backends as one list of forward-only steps, each in both dialects.

MIGRATIONS[n] upgrades a database from version n to n + 1; a step holds its sqlite and its
PostgreSQL statements, so the two schemas cannot drift apart. sqlite keeps the version in
PRAGMA user_version (`sqlite_schema`), PostgreSQL in a table of its own (`pg_schema`).
Times are unix seconds (sqlite REAL, PostgreSQL double precision: sub-second heartbeats).
The spec's columns keep their names; the columns after them serve the supervisor and twctl.
"""

from __future__ import annotations

from taskwatcher.grammar.datatype import datatype


@datatype(frozen=True)
class Step:
    """One version's change, written for each backend."""

    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


#: The live statuses the tasks table held up to version 6; version 7 adds RETRYING.
_V1_STATUSES = "'RESERVED', 'RUNNING', 'SILENT', 'STALLED'"
_V7_STATUSES = f"{_V1_STATUSES}, 'RETRYING'"


def _tasks_table(
    integer: str,
    real: str,
    boolean: str,
    key: str,
    *,
    table: str = "tasks",
    statuses: str = _V1_STATUSES,
    more: str = "",
) -> str:
    """The version-1 tasks table in a dialect (only the column types differ); version 7
    rebuilds it in sqlite, which cannot change a CHECK, under another name with more columns."""
    return f"""
    CREATE TABLE {table} (
        id                {key},
        name              TEXT,
        info1             TEXT,
        info2             TEXT,
        info3             TEXT,
        pid               {integer},
        status            TEXT NOT NULL DEFAULT 'RESERVED'
                          CHECK (status IN ({statuses})),
        feedback          INTEGER NOT NULL DEFAULT 0,          -- 1: it has written feedback
        reservetime       {real} NOT NULL,
        starttime         {real},
        duration          {real},                              -- spec column; computed on read
        lastupdate        {real} NOT NULL,
        timeout           {real},
        is_unique         {boolean},                           -- the task claims its name
        host              TEXT,
        supervisor_pid    {integer},
        supervisor_ctime  {real},
        child_ctime       {real},
        pgid              {integer},
        heartbeat         {real},                              -- last heartbeat, any source
        feedpath          TEXT,
        command           TEXT,                                -- JSON argv
        kill_request      TEXT,                                -- who asked for the kill
        kill_requested_at {real}{more}
    )
    """


def _history_table(integer: str, real: str, key: str) -> str:
    """The version-1 history table in a dialect."""
    return f"""
    CREATE TABLE history (
        id          {key},
        taskid      {integer} NOT NULL,
        taskname    TEXT,
        info1       TEXT,
        info2       TEXT,
        info3       TEXT,
        termsignal  TEXT,
        termerror   TEXT,
        starttime   {real},                                    -- null: never started
        endtime     {real} NOT NULL,
        duration    {real} NOT NULL,
        feedback    {"BLOB" if integer == "INTEGER" else "bytea"} NOT NULL,  -- final JSON
        exitcode    {integer},
        outcome     TEXT NOT NULL CHECK (outcome IN
                    ('COMPLETED', 'FAILED', 'TIMEOUT', 'KILLED', 'LOST', 'EXPIRED')),
        reservetime {real},
        host        TEXT,
        pid         {integer},
        timeout     {real},
        killed_by   TEXT,
        command     TEXT                                       -- JSON argv
    )
    """


_TASKS_INDEXES = (
    "CREATE INDEX tasks_name ON tasks (name)",
    "CREATE UNIQUE INDEX tasks_unique_name ON tasks (name) WHERE is_unique",
    "CREATE INDEX tasks_reserved ON tasks (reservetime) WHERE status = 'RESERVED'",
)
_INDEXES = (
    *_TASKS_INDEXES,
    "CREATE UNIQUE INDEX history_taskid ON history (taskid)",
    "CREATE INDEX history_name_end ON history (taskname, endtime)",
    "CREATE INDEX history_end ON history (endtime)",
    "CREATE INDEX history_outcome_end ON history (outcome, endtime)",
)

_CREATE_V1 = Step(
    sqlite=(
        _tasks_table(
            "INTEGER",
            "REAL",
            "INTEGER NOT NULL DEFAULT 0",
            "INTEGER PRIMARY KEY AUTOINCREMENT",  # never reused once archived
        ),
        """
        CREATE TABLE feedbacks (
            id           INTEGER PRIMARY KEY,                  -- the live task's id
            feedback     BLOB NOT NULL,                        -- JSON object
            lastupdate   REAL NOT NULL,
            reader_state BLOB                                  -- where the reader stopped
        )
        """,
        _history_table("INTEGER", "REAL", "INTEGER PRIMARY KEY AUTOINCREMENT"),
        *_INDEXES,
    ),
    postgres=(
        # A sequence of its own, which dropping the tables (init) leaves: ids never repeat.
        "CREATE SEQUENCE IF NOT EXISTS task_ids",
        _tasks_table(
            "bigint",
            "double precision",
            "boolean NOT NULL DEFAULT false",
            "bigint PRIMARY KEY DEFAULT nextval('task_ids')",
        ),
        # Feedback was published by the supervisor alone from the start here: no reader state.
        """
        CREATE TABLE feedbacks (
            id           bigint PRIMARY KEY,
            feedback     bytea NOT NULL,
            lastupdate   double precision NOT NULL
        )
        """,
        _history_table(
            "bigint", "double precision", "bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
        ),
        *_INDEXES,
    ),
)

#: Version 2: what proves a process is the task's (its token's digest) and whose task it is;
#: feedback is published by the supervisor alone.
_OWNERSHIP_V2 = Step(
    sqlite=(
        "ALTER TABLE tasks ADD COLUMN token_hash TEXT",  # SHA-256 of the child's token
        "ALTER TABLE tasks ADD COLUMN uid INTEGER",  # the supervisor's user id
        # Only the supervisor reads a feedback file now, keeping its reader in memory: the
        # saved reader state goes. Rebuilt rather than DROP COLUMN (sqlite before 3.35).
        """
        CREATE TABLE feedbacks_v2 (
            id           INTEGER PRIMARY KEY,                  -- the live task's id
            feedback     BLOB NOT NULL,                        -- JSON object, as published
            lastupdate   REAL NOT NULL
        )
        """,
        "INSERT INTO feedbacks_v2 (id, feedback, lastupdate)"
        " SELECT id, feedback, lastupdate FROM feedbacks",
        "DROP TABLE feedbacks",
        "ALTER TABLE feedbacks_v2 RENAME TO feedbacks",
    ),
    postgres=(
        "ALTER TABLE tasks ADD COLUMN token_hash TEXT",
        "ALTER TABLE tasks ADD COLUMN uid bigint",
    ),
)

#: Version 3: the captured output: where its log is, and the end of it kept in history.
_OUTPUT_V3 = Step(
    sqlite=(
        "ALTER TABLE tasks ADD COLUMN logfile TEXT",  # null: the output is not captured
        "ALTER TABLE history ADD COLUMN logfile TEXT",
        "ALTER TABLE history ADD COLUMN output_tail TEXT",  # the last lines of the output
    ),
    postgres=(
        "ALTER TABLE tasks ADD COLUMN logfile TEXT",
        "ALTER TABLE history ADD COLUMN logfile TEXT",
        "ALTER TABLE history ADD COLUMN output_tail TEXT",
    ),
)

#: Version 4: what a task said of itself through sd_notify.
_NOTIFY_V4 = Step(
    sqlite=(
        "ALTER TABLE tasks ADD COLUMN ready REAL",  # when it sent READY=1
        "ALTER TABLE tasks ADD COLUMN stopping REAL",  # when it sent STOPPING=1
    ),
    postgres=(
        "ALTER TABLE tasks ADD COLUMN ready double precision",
        "ALTER TABLE tasks ADD COLUMN stopping double precision",
    ),
)

#: Version 5: tasks of many hosts: the supervisor's lease on its row (server clock; sqlite
#: keeps no leases), the last lines of its output, pushed for readers on other hosts, and
#: in history what lets a task's own host stop the leftovers of a task another host found
#: LOST.
#: lease_until has no index: renewing it every second then stays a cheap in-page update.
_HOSTS_V5 = Step(
    sqlite=(
        "ALTER TABLE tasks ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN output_tail TEXT",
        "ALTER TABLE history ADD COLUMN token_hash TEXT",
        "ALTER TABLE history ADD COLUMN uid INTEGER",
        "ALTER TABLE history ADD COLUMN swept INTEGER NOT NULL DEFAULT 1",
    ),
    postgres=(
        "ALTER TABLE tasks ADD COLUMN lease_until double precision NOT NULL"
        " DEFAULT extract(epoch FROM clock_timestamp())",
        "ALTER TABLE tasks ADD COLUMN output_tail TEXT",
        "ALTER TABLE history ADD COLUMN token_hash TEXT",
        "ALTER TABLE history ADD COLUMN uid bigint",
        # false: LOST on another host's word (its lease), its leftovers not looked for yet
        "ALTER TABLE history ADD COLUMN swept boolean NOT NULL DEFAULT true",
        "CREATE INDEX history_unswept ON history (host) WHERE NOT swept",
    ),
)

#: `twctl metrics` counts and dates history by name and outcome at every scrape: with this
#: index both of its queries read the index alone, not every row.
_TALLY_INDEX = "CREATE INDEX history_tally ON history (taskname, outcome, endtime)"
_TALLY_V6 = Step(sqlite=(_TALLY_INDEX,), postgres=(_TALLY_INDEX,))

#: Version 7: retries. A task is RETRYING between two attempts, `attempt` counts them
#: (during RETRYING: the one to come) out of `attempts`, `retry_at` is when the next one is
#: launched; history keeps a row per attempt, so a task id is unique per attempt there.
_TASKS_V6_COLUMNS = (
    "id, name, info1, info2, info3, pid, status, feedback, reservetime, starttime, duration,"
    " lastupdate, timeout, is_unique, host, supervisor_pid, supervisor_ctime, child_ctime,"
    " pgid, heartbeat, feedpath, command, kill_request, kill_requested_at, token_hash, uid,"
    " logfile, ready, stopping, lease_until, output_tail"
)
_ATTEMPTS_V7 = Step(
    sqlite=(
        _tasks_table(
            "INTEGER",
            "REAL",
            "INTEGER NOT NULL DEFAULT 0",
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            table="tasks_v7",
            statuses=_V7_STATUSES,
            more=""",
        token_hash        TEXT,
        uid               INTEGER,
        logfile           TEXT,
        ready             REAL,
        stopping          REAL,
        lease_until       REAL NOT NULL DEFAULT 0,
        output_tail       TEXT,
        attempt           INTEGER NOT NULL DEFAULT 1,
        attempts          INTEGER NOT NULL DEFAULT 1,
        retry_at          REAL""",
        ),
        f"INSERT INTO tasks_v7 ({_TASKS_V6_COLUMNS}) SELECT {_TASKS_V6_COLUMNS} FROM tasks",
        # The id sequence goes with the table, so no id is ever handed out twice.
        "DELETE FROM sqlite_sequence WHERE name = 'tasks_v7'",
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'tasks_v7', seq FROM sqlite_sequence"
        " WHERE name = 'tasks'",
        "DROP TABLE tasks",
        "ALTER TABLE tasks_v7 RENAME TO tasks",  # renames its sqlite_sequence row too
        *_TASKS_INDEXES,
        "ALTER TABLE history ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
        "DROP INDEX history_taskid",
        "CREATE UNIQUE INDEX history_attempt ON history (taskid, attempt)",
    ),
    postgres=(
        "ALTER TABLE tasks DROP CONSTRAINT tasks_status_check",
        f"ALTER TABLE tasks ADD CONSTRAINT tasks_status_check CHECK (status IN ({_V7_STATUSES}))",
        "ALTER TABLE tasks ADD COLUMN attempt bigint NOT NULL DEFAULT 1",
        "ALTER TABLE tasks ADD COLUMN attempts bigint NOT NULL DEFAULT 1",
        "ALTER TABLE tasks ADD COLUMN retry_at double precision",
        "ALTER TABLE history ADD COLUMN attempt bigint NOT NULL DEFAULT 1",
        "DROP INDEX history_taskid",
        "CREATE UNIQUE INDEX history_attempt ON history (taskid, attempt)",
    ),
)

MIGRATIONS: tuple[Step, ...] = (
    _CREATE_V1,
    _OWNERSHIP_V2,
    _OUTPUT_V3,
    _NOTIFY_V4,
    _HOSTS_V5,
    _TALLY_V6,
    _ATTEMPTS_V7,
)
LATEST_VERSION = len(MIGRATIONS)
TABLES = ("tasks", "feedbacks", "history")
