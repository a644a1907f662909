"""One sqlite connection as the store uses it: checked at open, fair on the lock, never WAL,
and watched, without a lock, for the commits of other connections.

Every write is a short `BEGIN IMMEDIATE` transaction (writers queue on the busy timeout
instead of failing on a lock upgrade); statements outside a transaction wait for the lock in
short tries (`locking.patiently`). Database trouble becomes one StoreError. Text bound to a
statement is made storable first (`records.storable`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from taskwatcher.engine import sqlite_schema
from taskwatcher.engine.errors import NoDatabase, RowLost, StoreError
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.locking import SQLITE_WAIT, patiently
from taskwatcher.engine.records import storable
from taskwatcher.engine.settings import busy_timeout
from taskwatcher.engine.sqlite_file import (
    check_writable,
    existing_db_file,
    file_uri,
    prepare_db_file,
    read_only_reason,
)
from taskwatcher.engine.store import Access

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Clock = Callable[[], float]
log = get_logger(__name__)


class Database:
    """A checked sqlite database, with one connection for one command, opened as `access`
    allows (`store.open_store`); upgraded unless it is `read_only` here.

    One lock serializes every writer, so rows need no locks of their own, names neither,
    and nobody is told of changes: waiters watch the file (`ChangeWatch`).
    """

    for_update = ""
    skip_locked = ""

    def __init__(
        self, path: Path, clock: Clock, *, access: Access = Access.CREATE, missing_ok: bool = False
    ) -> None:
        self.path = path
        self.location = str(path)
        self.busy_timeout = busy_timeout()
        self._clock = clock
        self._db, read_only_because = _connect(path, self.busy_timeout, access, missing_ok)
        self.read_only = read_only_because is not None
        if self.read_only:
            log.warning("%s is read-only here (%s): housekeeping skipped", path, read_only_because)
        descriptor = _sqlite_descriptor(path)
        self._journal = JournalGuard(path, descriptor)
        self._changes = ChangeWatch(path, descriptor)
        self._identity = _file_identity(path)

    def close(self) -> None:
        self._db.close()

    def check_still_there(self) -> None:
        """RowLost when the path no longer names the file opened (deleted, replaced): what is
        written through this connection would then reach nobody."""
        if _file_identity(self.path) != self._identity:
            raise RowLost(f"{self.path} was deleted or replaced")

    @contextmanager
    def transaction(self) -> Iterator[float]:
        """A short write transaction; BEGIN IMMEDIATE takes the write lock up front.

        The clock is read once the lock is held, so a wait behind other writers does not
        date the change in the past.
        """
        self.execute("BEGIN IMMEDIATE")
        now = self._clock()
        try:
            yield now
            with self._errors():  # busy at COMMIT keeps the transaction: try again
                self._patiently(lambda: self._db.execute("COMMIT"))
        except BaseException:
            if self._db.in_transaction:  # sqlite already rolled back after some I/O errors
                self.execute("ROLLBACK")
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; outside a transaction (BEGIN included) a busy lock is waited for.

        Inside one, the write lock is held already (BEGIN IMMEDIATE): no retry is needed.
        """
        params = tuple(storable(value) if isinstance(value, str) else value for value in params)
        with self._errors():
            if self._db.in_transaction:
                return self._db.execute(sql, params)
            self._journal.check()  # a transaction starts: sqlite is about to read the header
            return self._patiently(lambda: self._db.execute(sql, params))

    def _patiently(self, action: Callable[[], sqlite3.Cursor]) -> sqlite3.Cursor:
        """`action` once the lock is free: for the busy timeout since another connection
        last committed (`locking.patiently`)."""
        return patiently(action, self.busy_timeout, progress=self._changes.look)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.execute(sql, params).fetchall()

    def row(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return self.execute(sql, params).fetchone()

    def wait_for_change(self, timeout: float) -> bool:
        """True once another connection may have committed since the previous call (or since
        the opening), False after `timeout` seconds; see `ChangeWatch`."""
        return self._changes.wait(timeout)

    def lock_name(self, name: str) -> None:
        """Nothing to do: the transaction holds the one write lock already."""

    def announce(self, kind: str, taskid: int) -> None:
        """Nothing to do: waiters see the commit in the file (`ChangeWatch`)."""

    def notices(self) -> list[int]:
        """No kill requests are announced: the supervisor hears them on its wake socket."""
        return []

    def notices_fileno(self) -> int | None:
        return None

    def listen_for_kills(self, taskid: int) -> None:
        """Nothing to do: see `notices`."""

    def pause_between_batches(self, started: float) -> None:
        """Leave the lock free as long as the batch that began at `started` (monotonic) held it.

        sqlite's lock is not fair: a waiting writer retries after sleeping, and finds the lock
        free soon enough only if a long change pauses between its batches.
        """
        time.sleep(time.monotonic() - started)

    def recreate(self) -> None:
        """Drop every table and build the latest schema, in one transaction."""
        with self.transaction(), self._errors():
            sqlite_schema.recreate(self._db)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Database trouble mid-command (disk full, lock wait exhausted) becomes one StoreError."""
        try:
            yield
        except sqlite3.Error as error:
            raise StoreError(f"{self.path}: {_explained(error)}") from error


def _connect(
    path: Path, timeout: float, access: Access, missing_ok: bool
) -> tuple[sqlite3.Connection, str | None]:
    """One connection to a checked database, and why it is read-only here (None: it is
    upgraded and writable); StoreError if unusable.

    Nothing is written before the file is known to be an sqlite database of a known version.
    A database missing where `missing_ok` allows is an empty one in memory: nothing is created.
    """
    try:
        target, read_only_because = _target(path, access)
    except NoDatabase:
        if not missing_ok:
            raise
        target, read_only_because = ":memory:", None
    try:
        # A URI only where _target made one: an absolute path or ":memory:" is no URI.
        connection = sqlite3.connect(target, timeout=SQLITE_WAIT, isolation_level=None, uri=True)
    except sqlite3.Error as error:
        raise StoreError(f"{path}: cannot open the database ({error})") from None
    writable = read_only_because is None
    try:
        patiently(lambda: sqlite_schema.prepare(connection, path, writable=writable), timeout)
    except sqlite3.OperationalError as error:
        connection.close()
        raise StoreError(f"{path}: cannot use the database ({_explained(error)})") from None
    except sqlite3.DatabaseError as error:
        connection.close()
        raise StoreError(f"{path}: not a taskwatcher database ({error})") from None
    except BaseException:
        connection.close()
        raise
    connection.row_factory = sqlite3.Row
    return connection, read_only_because


def _target(path: Path, access: Access) -> tuple[Path | str, str | None]:
    """What sqlite opens for `access`, and why read-only (None: read-write). Only CREATE
    names the file itself; the others a `file:` URI whose mode cannot create it, should it
    vanish after the checks."""
    if access is Access.CREATE:
        prepare_db_file(path)
        return path, None
    existing_db_file(path)
    if access is Access.WRITE:
        check_writable(path)
        return file_uri(path, "rw"), None
    read_only_because = read_only_reason(path)
    return file_uri(path, "rw" if read_only_because is None else "ro"), read_only_because


def _explained(error: sqlite3.Error) -> str:
    """sqlite's words for an error, but for a hot journal met where nothing can be written,
    which sqlite calls "attempt to write a readonly database"."""
    if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY_ROLLBACK:
        return (
            "a change was interrupted, and its -journal can be rolled back only where the"
            " database can be written"
        )
    return str(error)


class JournalGuard:
    """Keeps sqlite away from a database another program switched to WAL since it was opened.

    In WAL mode sqlite maps the `-shm` file, and a damaged one kills the process with SIGBUS;
    any writer of the database can switch it (`PRAGMA journal_mode = WAL`). So before each
    transaction the header's version bytes (offset 18) are read from sqlite's own descriptor
    (opening and closing another one would drop sqlite's POSIX locks), and a WAL database is
    refused. A switch between this check and sqlite's next read is not caught.
    """

    def __init__(self, path: Path, descriptor: int | None) -> None:
        self.path = path
        self._fd = descriptor

    def check(self) -> None:
        """StoreError, touching nothing, when the database is in WAL mode now."""
        if self._fd is not None and os.pread(self._fd, 2, 18) == _WAL_VERSIONS:
            raise StoreError(
                f"{self.path}: switched to WAL mode by another program; refused, so that its"
                " -shm file cannot crash this process (open it with taskwatcher to switch back)"
            )


_WAL_VERSIONS = b"\x02\x02"

#: Seconds between two looks of a ChangeWatch: its reaction time (a look costs a few µs).
CHANGE_POLL = 0.02


class ChangeWatch:
    """Notices commits of other connections without taking any lock, for waiters.

    A look is one stat of the path (another file put in its place) and a read of sqlite's
    file change counter (header offset 24, 4 bytes), which every commit in rollback-journal
    mode increments, from sqlite's own descriptor (see JournalGuard). Half the cost of a
    `PRAGMA data_version` query (`make bench`), which also takes the shared lock a writer's
    commit has to wait for; the counter catches the commits a coarse mtime cannot tell apart.
    """

    def __init__(self, path: Path, descriptor: int | None) -> None:
        self.path = path
        self._fd = descriptor
        self._seen = self.look()

    def wait(self, timeout: float) -> bool:
        """True as soon as a look differs from the last one taken, False after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            look = self.look()
            if look != self._seen:
                self._seen = look
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(CHANGE_POLL, left))

    def look(self) -> tuple[object, ...]:
        """The file as one look sees it: equal looks, no commit between them."""
        try:
            status = os.stat(self.path)
        except OSError:
            return ()  # gone: a change once, then nothing more to see
        seen = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        try:
            counter = None if self._fd is None else os.pread(self._fd, 4, 24)
        except OSError:
            counter = None
        return (*seen, counter)


def _sqlite_descriptor(path: Path) -> int | None:
    """The descriptor sqlite opened on the database file (same device and inode), if any."""
    wanted = _file_identity(path)
    for name in os.listdir("/proc/self/fd"):
        try:
            status = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if (status.st_dev, status.st_ino) == wanted:
            return int(name)
    return None


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file the path names now, None when nothing is there."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino
