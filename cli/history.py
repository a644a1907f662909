"""What `twctl history` walks: a page on a terminal, or every row, twice when aligned."""

from __future__ import annotations

from collections.abc import Iterator

from taskwatcher.engine import control
from taskwatcher.engine.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Rows `twctl history` shows on a terminal without --all or --limit.
PAGE = 50


def terminal_page(store: Store, filters: dict[str, Any]) -> tuple[list[dict], str | None]:
    """The PAGE most recent rows, and a caption saying how to see more when there are more."""
    records = list(control.history_listing(store, **filters, limit=PAGE + 1))
    if len(records) <= PAGE:
        return records, None
    return records[:PAGE], f"showing the {PAGE} most recent; --all or --limit N for more"


class HistoryWalk:
    """The history rows asked for, walkable twice (plain text measures, then prints).

    A later walk stops at the newest row the first one met, so both show the same rows
    even while tasks keep ending.
    """

    def __init__(self, store: Store, filters: dict[str, Any], limit: int | None) -> None:
        self._store = store
        self._filters = filters
        self._limit = limit
        self._max_id: int | None = None

    def __iter__(self) -> Iterator[dict]:
        newest = 0
        walk = control.history_listing(
            self._store, **self._filters, limit=self._limit, max_id=self._max_id
        )
        for record in walk:
            newest = max(newest, record["id"])
            yield record
        self._max_id = newest
