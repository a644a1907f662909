"""Opening databases: creation, migration, and refusing bad files without touching them."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from taskwatcher.engine import sqlite_schema as schema
from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.schema import Step
from taskwatcher.engine.sqlite_db import Database
from taskwatcher.engine.store import open_store
from tests.helpers import run_cli


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA user_version").fetchone()[0]


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}


def make_sqlite(path: Path, *statements: str) -> None:
    connection = sqlite3.connect(path)
    for statement in statements:
        connection.execute(statement)
    connection.commit()
    connection.close()


def assert_refused_untouched(path: Path, message: str) -> None:
    before = snapshot(path)
    with pytest.raises(StoreError) as refused:
        open_store(path)
    assert str(refused.value) == f"{path}: {message}"
    assert snapshot(path) == before
    assert not Path(f"{path}-wal").exists()


def test_missing_file_is_created_with_the_latest_schema(db_path):
    open_store(db_path).close()
    assert user_version(db_path) == schema.LATEST_VERSION
    assert {"tasks", "feedbacks", "history"} <= tables(db_path)


def test_empty_file_gets_the_schema(db_path):
    db_path.touch()
    with open_store(db_path) as store:
        assert store.reserve("x") == 1
    assert user_version(db_path) == schema.LATEST_VERSION


def journal_mode(connection: sqlite3.Connection | Database) -> str:
    """The journal mode of a plain connection, or of the store's own (`store._db`)."""
    return connection.execute("PRAGMA journal_mode").fetchone()[0]


def test_database_uses_a_synced_rollback_journal(db_path):
    """Not WAL, whose memory-mapped -shm kills a process with SIGBUS once damaged."""
    with open_store(db_path) as store:
        store.reserve("x")
        assert journal_mode(store._db) == "truncate"
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert not Path(f"{db_path}-wal").exists() and not Path(f"{db_path}-shm").exists()


def test_a_wal_database_of_an_older_version_leaves_wal_once_nobody_holds_it(db_path):
    with open_store(db_path) as store:
        store.reserve("kept")
    with closing(sqlite3.connect(db_path, isolation_level=None)) as old:
        assert journal_mode(old) == "delete"  # rollback: TRUNCATE is each connection's own
        old.execute("PRAGMA journal_mode = WAL")
        old.execute("SELECT count(*) FROM tasks").fetchone()  # an older twrun, still open
        with pytest.raises(StoreError, match="in WAL mode and open elsewhere"):
            open_store(db_path)
    with open_store(db_path) as store:
        assert journal_mode(store._db) == "truncate"
        assert [task.name for task in store.list_tasks()] == ["kept"]
    assert not Path(f"{db_path}-wal").exists()


def test_reopening_keeps_the_data(db_path):
    with open_store(db_path) as store:
        taskid = store.reserve("kept")
    with open_store(db_path) as store:
        assert store.get_task(taskid).name == "kept"


def test_migrations_run_from_the_stored_version(db_path, monkeypatch):
    """A future step is applied on top of the stored version without redoing the others."""
    open_store(db_path).close()
    step = Step(sqlite=("ALTER TABLE tasks ADD COLUMN priority INTEGER",), postgres=())
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, step))
    monkeypatch.setattr(schema, "LATEST_VERSION", len(schema.MIGRATIONS))
    with open_store(db_path) as store:
        taskid = store.reserve("x")
        assert store.get_task(taskid).name == "x"  # a column it does not know reads all the same
    with closing(sqlite3.connect(db_path)) as raw:
        columns = {row[1] for row in raw.execute("PRAGMA table_info(tasks)")}
    assert "priority" in columns
    assert user_version(db_path) == len(schema.MIGRATIONS)


def test_text_file_is_refused_untouched(db_path):
    db_path.write_text("name,pid\nbackup,12\n" * 20)
    assert_refused_untouched(db_path, "not a taskwatcher database (file is not a database)")


def test_short_binary_file_is_refused_untouched(db_path):
    db_path.write_bytes(b"\x00\x01")
    assert_refused_untouched(db_path, "not a taskwatcher database (file is not a database)")


def test_sqlite_header_with_garbage_is_refused_untouched(db_path):
    db_path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    assert_refused_untouched(db_path, "not a taskwatcher database (file is not a database)")


def test_newer_schema_is_refused_untouched(db_path):
    make_sqlite(db_path, "CREATE TABLE tasks (id INTEGER)", "PRAGMA user_version = 99")
    assert_refused_untouched(
        db_path,
        f"written by a newer taskwatcher (schema version 99, this one knows up to"
        f" {schema.LATEST_VERSION})",
    )


def test_another_applications_database_is_refused_untouched(db_path):
    make_sqlite(db_path, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    assert_refused_untouched(db_path, "not a taskwatcher database (unversioned, has other tables)")


def test_refused_database_keeps_its_header(db_path):
    """Changing the journal mode may rewrite the header: never for a refused file."""
    make_sqlite(db_path, "PRAGMA user_version = 99")
    before = db_path.read_bytes()[18:20]
    with pytest.raises(StoreError):
        open_store(db_path)
    assert db_path.read_bytes()[18:20] == before == b"\x01\x01"


def test_second_open_in_one_process_keeps_the_first_ones_locks(db_path: Path) -> None:
    """Opening the file again must not drop the POSIX locks sqlite holds for the first Store."""
    first = open_store(db_path)
    first.reserve("before")
    open_store(db_path).close()
    for name in ("after", "later"):
        # another process opens and closes the database: it must not think it is the last user
        listed = run_cli("twctl", "--db", db_path, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        first.reserve(name)
    final = run_cli("twctl", "--db", db_path, "list", "--json")
    assert [task["name"] for task in orjson.loads(final.stdout)] == ["before", "after", "later"]
    first.close()


def test_a_version_1_database_is_upgraded_with_its_rows(db_path):
    """What the first release wrote: its tables, rows and feedback survive the upgrade."""
    with closing(sqlite3.connect(db_path, isolation_level=None)) as old:
        for statement in schema.MIGRATIONS[0].sqlite:
            old.execute(statement)
        old.execute("PRAGMA user_version = 1")
        old.execute(
            "INSERT INTO tasks (name, status, reservetime, lastupdate)"
            " VALUES ('old', 'RUNNING', 1, 1)"
        )
        old.execute(
            "INSERT INTO feedbacks (id, feedback, lastupdate, reader_state) VALUES (1, ?, 1, ?)",
            ('{"step":"3"}', b"\0"),
        )
    with open_store(db_path) as store:
        assert user_version(db_path) == schema.LATEST_VERSION
        (task,) = store.list_tasks()
        assert (task.name, task.token_hash, task.uid) == ("old", None, None)
        assert store.load_feedback(1) == {"step": "3"}
    columns = {row[1] for row in sqlite3.connect(db_path).execute("PRAGMA table_info(feedbacks)")}
    assert columns == {"id", "feedback", "lastupdate"}
