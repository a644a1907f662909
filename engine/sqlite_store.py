"""The store on an sqlite file: one host, one lock, no leases (`sql_store` holds the SQL)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from taskwatcher.engine.sql_store import SqlStore
from taskwatcher.engine.sqlite_db import Database
from taskwatcher.engine.store import Access


class SqliteStore(SqlStore):
    """The sqlite file at `path`, checked at opening, and upgraded where it can be written."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float],
        reservation_ttl: float,
        *,
        access: Access = Access.CREATE,
        missing_ok: bool = False,
    ) -> None:
        database = Database(path, clock, access=access, missing_ok=missing_ok)
        super().__init__(database, clock, reservation_ttl)
        self.read_only = database.read_only
