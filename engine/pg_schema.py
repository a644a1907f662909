"""The PostgreSQL side of the schema (`schema`): versioned in a table of its own, upgraded by
the steps' PostgreSQL forms under an advisory lock, so that many hosts opening a new
database at once give one upgrade and no error."""

from __future__ import annotations

from typing import Any

import psycopg

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.schema import LATEST_VERSION, MIGRATIONS, TABLES

VERSION_TABLE = "taskwatcher_schema"
#: The advisory lock every upgrade takes (one number, "twschema" in ASCII).
SCHEMA_LOCK = 0x7477736368656D61


def prepare(connection: psycopg.Connection[Any], location: str) -> None:
    """Refuse a database this code cannot read or does not own, then upgrade it (on a
    connection returning rows as mappings)."""
    version = _checked_version(connection, location)
    if version == LATEST_VERSION:
        return
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        version = _checked_version(connection, location)  # another host may have upgraded
        _upgrade(connection, version)


def recreate(connection: psycopg.Connection[Any]) -> None:
    """Drop every table and build the latest schema, in one transaction.

    The task id sequence is not dropped: no id is ever handed out twice, across init too.
    """
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        for table in (*TABLES, VERSION_TABLE):
            connection.execute(f"DROP TABLE IF EXISTS {table}")
        _upgrade(connection, 0)


def _checked_version(connection: psycopg.Connection[Any], location: str) -> int:
    """The stored version: 0 for an empty database; StoreError for a newer or a foreign one."""
    # pg_tables, not to_regclass: a name lookup may answer from a cache that another
    # host's upgrade, committed while this transaction waited for the lock, left stale.
    found = connection.execute(
        "SELECT bool_or(tablename = %s) AS versioned, bool_or(tablename = 'tasks') AS has_tasks"
        " FROM pg_tables WHERE schemaname = current_schema()",
        (VERSION_TABLE,),
    ).fetchone()
    assert found is not None
    if not found["versioned"]:
        if found["has_tasks"]:
            raise StoreError(f"{location}: not a taskwatcher database (unversioned, has tasks)")
        return 0
    row = connection.execute(f"SELECT max(version) AS version FROM {VERSION_TABLE}").fetchone()
    version = int(row["version"] or 0) if row is not None else 0
    if version > LATEST_VERSION:
        raise StoreError(
            f"{location}: written by a newer taskwatcher (schema version {version}, "
            f"this one knows up to {LATEST_VERSION})"
        )
    return version


def _upgrade(connection: psycopg.Connection[Any], version: int) -> None:
    for step in MIGRATIONS[version:]:
        for statement in step.postgres:
            connection.execute(statement)
    connection.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer NOT NULL)")
    connection.execute(f"DELETE FROM {VERSION_TABLE}")
    connection.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (LATEST_VERSION,))
