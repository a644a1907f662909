"""The sqlite side of the schema (`schema`): versioned with PRAGMA user_version, upgraded by
the steps' sqlite forms."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.locking import is_busy
from taskwatcher.engine.schema import LATEST_VERSION, MIGRATIONS, TABLES


def prepare(connection: sqlite3.Connection, path: Path, *, writable: bool = True) -> None:
    """Check, choose the journal, migrate: each step may be run again after a busy lock.

    A database that cannot be written here is only checked: it must be readable as it is.
    """
    check_usable(connection, path)
    if not writable:
        _check_current(connection, path)
        return
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


def _check_current(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse an older schema, which the queries of this version cannot read and which
    cannot be upgraded where the database cannot be written."""
    version = _user_version(connection)
    if version < LATEST_VERSION:
        raise StoreError(
            f"{path}: schema version {version}, older than this taskwatcher's"
            f" ({LATEST_VERSION}), cannot be upgraded here (read-only): run twctl update on it"
            " where it can be written"
        )


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
        for statement in step.sqlite:
            connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {LATEST_VERSION}")


def _user_version(connection: sqlite3.Connection) -> int:
    return connection.execute("PRAGMA user_version").fetchone()[0]
