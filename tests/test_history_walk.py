"""Store.iter_history: history() a page at a time, on real sqlite files."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from taskwatcher.engine.errors import InvalidRequest
from taskwatcher.engine.store import Store, open_store
from tests.store_helpers import finish, started

T0 = 1_700_000_000.0
#: (name, outcome, end) of each archived task; equal end times make pages split inside a tie.
ENDINGS = [
    ("a", "COMPLETED", 10),
    ("b", "FAILED", 20),
    ("a", "FAILED", 30),
    ("a", "COMPLETED", 30),
    ("b", "COMPLETED", 30),
    ("a", "KILLED", 40),
    ("b", "COMPLETED", 50),
]


def filled(location: Path | str) -> Store:
    opened = open_store(location)
    for name, outcome, end in ENDINGS:
        finish(opened, started(opened, name), outcome, endtime=T0 + end)
    return opened


@pytest.fixture
def store(backend_location: Path | str):
    with filled(backend_location) as opened:
        yield opened


def archive_one(store: Store, end: float) -> int:
    taskid = started(store, "late")
    finish(store, taskid, "COMPLETED", endtime=end)
    return taskid


PAGES = [1, 2, 3, 500]
FILTERS = [{}, {"name": "a"}, {"outcome": "COMPLETED"}, {"since": T0 + 20, "before": T0 + 50}]
LIMITS = [None, 1, 2, 5, 100]


def check_pages(store: Store, page: int, filters: dict, limit: int | None) -> None:
    walked = list(store.iter_history(**filters, limit=limit, page=page))
    assert walked == store.history(**filters, limit=limit)
    ids = [record.taskid for record in walked]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("limit", LIMITS)
def test_pages_make_up_history(db_path: Path, page: int, filters: dict, limit: int | None) -> None:
    with filled(db_path) as store:
        check_pages(store, page, filters, limit)


def test_pages_make_up_history_on_postgresql(pg_url: str) -> None:
    """The same walks on one PostgreSQL database (one database for all: they only read)."""
    with filled(pg_url) as store:
        for page in PAGES:
            for filters in FILTERS:
                for limit in LIMITS:
                    check_pages(store, page, filters, limit)


def test_rows_archived_during_a_walk_stay_out(store: Store) -> None:
    """An EXPIRED reservation is archived with a past end time: it would sort into the walk."""
    before = store.history()
    walk = store.iter_history(page=2)
    first = next(walk)
    archive_one(store, T0 + 35)
    assert [first, *walk] == before
    assert store.history()[2].taskname == "late"


def test_a_second_walk_bounded_by_the_first_sees_the_same_rows(store: Store) -> None:
    first = list(store.iter_history(limit=4, page=3))
    archive_one(store, T0 + 60)
    newest = max(record.id for record in first)
    assert list(store.iter_history(limit=4, max_id=newest)) == first
    assert next(store.iter_history(limit=4)).taskname == "late"


def test_no_read_is_open_between_pages(db_path: Path) -> None:
    """A checkpoint that must wait for readers completes while a walk is paused.

    An open read would hold its snapshot (in WAL mode) or its shared lock (in a rollback
    journal, where it would block every writer).
    """
    store = filled(db_path)
    walk = store.iter_history(page=2)
    next(walk)
    archive_one(store, T0 + 60)
    with closing(sqlite3.connect(db_path, timeout=0, isolation_level=None)) as other:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert len(list(walk)) == len(ENDINGS) - 1


def test_a_limit_beyond_sqlite_integers_means_all(store: Store) -> None:
    assert len(list(store.iter_history(limit=2**64))) == len(ENDINGS)


def test_an_empty_page_size_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest):
        list(store.iter_history(page=0))
