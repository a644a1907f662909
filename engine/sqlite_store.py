"""The store on an sqlite file: one host, one lock, no leases (`sql_store` holds the SQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from taskwatcher.engine.sql_store import SqlStore
from taskwatcher.engine.sqlite_db import Database


class SqliteStore(SqlStore):
    """The sqlite file at `path`, checked and upgraded at opening."""

    def __init__(self, path: Path, clock: Callable[[], float], reservation_ttl: float) -> None:
        super().__init__(Database(path, clock), clock, reservation_ttl)
