"""Waiting for the write lock: up to the busy timeout, in short tries, then one clear error."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.locking import MOST_TIMEOUTS, PAUSE, patiently, random_pause
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


class _Busy:
    """An action that finds the lock busy until `free_at` on a fake clock (each try
    advancing it by `step`), while others commit every `commits_every` seconds."""

    def __init__(self, free_at: float, step: float, commits_every: float | None) -> None:
        self.now = 0.0
        self.free_at = free_at
        self.step = step
        self.commits_every = commits_every

    def clock(self) -> float:
        return self.now

    def progress(self) -> object:
        return None if self.commits_every is None else int(self.now / self.commits_every)

    def __call__(self) -> str:
        self.now += self.step
        if self.now < self.free_at:
            error = sqlite3.OperationalError("database is locked")
            error.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise error
        return "done"


def test_a_writer_waits_past_the_timeout_while_the_others_get_through() -> None:
    """A crowd on an overloaded machine: busy for 3 timeouts, but commits keep coming."""
    busy = _Busy(free_at=3.0, step=0.1, commits_every=0.5)
    assert patiently(busy, 1.0, clock=busy.clock, progress=busy.progress) == "done"


def test_a_writer_gives_up_when_nobody_commits_for_the_timeout() -> None:
    """A holder stuck with the lock: the timeout counts from the last commit seen."""
    busy = _Busy(free_at=30.0, step=0.1, commits_every=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        patiently(busy, 1.0, clock=busy.clock, progress=busy.progress)
    assert busy.now == pytest.approx(1.0, abs=0.15)


def test_however_much_the_others_commit_a_writer_waits_ten_timeouts_at_most() -> None:
    busy = _Busy(free_at=1000.0, step=0.1, commits_every=0.5)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        patiently(busy, 1.0, clock=busy.clock, progress=busy.progress)
    assert busy.now == pytest.approx(MOST_TIMEOUTS * 1.0, abs=0.15)


def test_the_pauses_between_tries_are_short_and_spread():
    """Random within the bounds, so waiters that met at a lock do not come back in step."""
    pauses = [random_pause() for _ in range(2000)]
    shortest, longest = PAUSE
    assert all(shortest <= pause <= longest for pause in pauses)
    assert len(set(pauses)) > 1000
    assert min(pauses) < shortest + 0.001 and max(pauses) > longest - 0.001
