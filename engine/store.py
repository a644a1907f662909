"""The store the engine needs, as an interface, and where to get one for a location.

Everything the supervisor, housekeeping and twctl do with tasks goes through these methods;
the backends hold all the SQL (`sql_store`, over `sqlite_db` or `pg_db`). A location is a
path (an sqlite file) or a `postgresql://` URL (a database many hosts share).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.location import is_url
from taskwatcher.engine.records import Ended, Ending, Launch, Tally, Task
from taskwatcher.engine.settings import reservation_ttl_from_env
from taskwatcher.grammar.protocol import Protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Store(Protocol):
    """Live tasks, their published feedback and the history of finished ones, shared by many
    processes. Writes of a task's supervisor name its token's digest: a row that is no longer
    its own is never written (RowLost). Every change of status follows the life-cycle table."""

    location: str  # what messages call the database (never with a password)
    reservation_ttl: float
    lease: float | None  # seconds a supervisor's lease lasts; None: no leases (one host)
    many_hosts: bool  # whether tasks of several hosts share it
    read_only: bool  # opened read-only (`Access.READ` where it cannot be written)

    def close(self) -> None: ...
    def __enter__(self) -> Store: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def now(self) -> float: ...

    # reservations and the supervisor's life of a task
    def reserve(
        self,
        name: str | None = None,
        *,
        unique: bool = False,
        info1: str | None = None,
        info2: str | None = None,
        info3: str | None = None,
    ) -> int: ...
    def claim(self, taskid: int, launch: Launch) -> None: ...
    def start(
        self, name: str, launch_of: Callable[[int], Launch], *, unique: bool = False
    ) -> int: ...
    def set_child(self, taskid: int, token_hash: str, pid: int, ctime: float | None) -> None: ...
    def grade(self, taskid: int, token_hash: str, status: Status | str) -> None: ...
    def heartbeat(
        self,
        taskid: int,
        token_hash: str,
        when: float | None,
        feedback: dict[str, str] | None = None,
    ) -> None: ...
    def kill_request(self, taskid: int, token_hash: str) -> str | None: ...
    def push_output(self, taskid: int, token_hash: str, tail: str) -> None: ...
    def listen_for_kills(self, taskid: int) -> None: ...
    def kill_notices(self) -> list[int]: ...
    def notices_fileno(self) -> int | None: ...
    def note(self, taskid: int, token_hash: str, values: Mapping[str, float]) -> None: ...
    def archive(self, taskid: int, ending: Ending, *, token_hash: str | None = None) -> Ended: ...
    def retry(self, taskid: int, token_hash: str, ending: Ending, retry_at: float) -> Ended: ...
    def relaunch(self, taskid: int, token_hash: str, timeout: float | None) -> str | None: ...

    # requests and housekeeping from outside the supervisor
    def request_kill(self, taskid: int, requester: str) -> Task: ...
    def cancel_reservation(self, taskid: int, requester: str) -> Ended: ...
    def expire_reservations(self) -> list[Ended]: ...
    def expire_leases(self) -> list[Ended]: ...
    def unswept(self, host: str) -> list[Ended]: ...
    def mark_swept(self, taskid: int) -> None: ...
    def clear_history(
        self,
        before: float | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        logs: Callable[[list[tuple[int, str]]], None] | None = None,
        host: str | None = None,
    ) -> int: ...
    def reinitialize(self) -> None: ...

    # reads
    def get_task(self, taskid: int) -> Task | None: ...
    def list_tasks(
        self, *, name: str | None = None, status: str | None = None, started: bool = False
    ) -> list[Task]: ...
    def live_count(self) -> int: ...
    def history_count(self) -> int: ...
    def load_feedback(self, taskid: int) -> dict[str, str]: ...
    def live_feedback(self) -> dict[int, dict[str, str]]: ...
    def history_of(self, taskid: int) -> Ended | None: ...
    def history(self, **filters: Any) -> list[Ended]: ...
    def iter_history(self, **filters: Any) -> Iterator[Ended]: ...
    def history_tally(self, since: float) -> list[Tally]: ...

    # waiting for other processes
    def wait_for_change(self, timeout: float) -> bool:
        """Return True once another connection may have committed a change since this store's
        previous call (the first call counts from the opening, or returns True at once), False
        after `timeout` seconds without one; a True may be spurious, so callers read again what
        they wait for. Lets a waiter react to an end at once, without polling its queries."""
        ...


class Access(StrEnum):
    """What a command does with its database, which decides what opening may do to it.

    CREATE: it may be the database's first user; the file and its folders are made if
    missing. WRITE: it changes the database, which must be there and writable. READ: it only
    reads; the database must be there, and where it cannot be written it is opened read-only
    (no upgrade, no housekeeping) rather than refused.
    """

    CREATE = "create"
    WRITE = "write"
    READ = "read"


def open_store(
    location: str | os.PathLike[str],
    *,
    access: Access = Access.CREATE,
    missing_ok: bool = False,
    clock: Callable[[], float] = time.time,
    reservation_ttl: float | None = None,
) -> Store:
    """Open and upgrade the store at `location` as `access` allows; StoreError if unusable.

    Only `Access.CREATE` makes a missing sqlite file, so a typo in a path never leaves a
    database behind: otherwise a missing one is NoDatabase, or with `missing_ok` an empty
    store in memory (the default location before its first use reads as empty). Without
    `reservation_ttl`, $TASKWATCHER_RESERVATION_TTL or the default applies. A URL loads the
    PostgreSQL driver, which nothing else imports; a server's database is never created by
    opening, whatever `access`.
    """
    ttl = reservation_ttl_from_env() if reservation_ttl is None else reservation_ttl
    if is_url(location):
        return _open_server(str(location), clock, ttl)
    from taskwatcher.engine.sqlite_store import SqliteStore

    # Every path stored or handed to a task is absolute.
    path = Path(location).absolute()
    return SqliteStore(path, clock, ttl, access=access, missing_ok=missing_ok)


def _open_server(url: str, clock: Callable[[], float], ttl: float) -> Store:
    try:
        from taskwatcher.engine.pg_store import PgStore
    except ImportError as error:
        if error.name is None or not error.name.startswith("psycopg"):
            raise
        raise StoreError(
            "a postgresql:// database needs the psycopg driver:"
            " pip install 'taskwatcher[postgresql]'"
        ) from None
    return PgStore(url, clock, ttl)
