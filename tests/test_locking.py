"""Waiting for the write lock: up to the busy timeout, in short tries, then one clear error."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.locking import patiently
from taskwatcher.engine.store import open_store


def hold_the_lock(db: Path, seconds: float) -> threading.Thread:
    """Another connection that takes the write lock and keeps it for `seconds`."""
    taken = threading.Event()

    def hold() -> None:
        with sqlite3.connect(db, isolation_level=None) as other:
            other.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(seconds)
            other.execute("COMMIT")

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(5)
    return holder


def test_a_writer_waits_for_the_lock_and_gets_it(db_path: Path) -> None:
    with open_store(db_path) as store:
        holder = hold_the_lock(db_path, 0.4)
        started = time.monotonic()
        taskid = store.reserve("after the wait")
        assert time.monotonic() - started >= 0.3
        holder.join()
        assert store.get_task(taskid).name == "after the wait"


def test_past_the_busy_timeout_the_error_is_one_line(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKWATCHER_BUSY_TIMEOUT", "0.2")
    with open_store(db_path) as store:
        holder = hold_the_lock(db_path, 1.0)
        with pytest.raises(StoreError, match="database is locked"):
            store.reserve("too late")
        holder.join()
        assert store.live_count() == 0


def test_only_a_busy_lock_is_tried_again() -> None:
    tries = []

    def fails() -> None:
        tries.append(1)
        raise sqlite3.OperationalError("no such table: x")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        patiently(fails, 5.0)
    assert len(tries) == 1
