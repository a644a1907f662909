"""One PostgreSQL connection as the store uses it: upgraded at open, bounded in every wait,
reconnected after a break, and listening for the announcements of other hosts.

Imported only for a `postgresql://` location, so sqlite users never load psycopg. Every
statement runs on one autocommit connection, a write in an explicit transaction; statements
are written with `?` marks, as for sqlite, and adapted here. A network cut must never hang a
supervisor inside a query: the connection has keepalives and `tcp_user_timeout`, and a
statement that waits longer than its bound anyway (a middlebox that acknowledges for a dead
peer) has its socket shut from a watchdog thread (`HangGuard`). Database trouble becomes
one StoreError, whose message never holds a password.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import IsolationLevel
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from taskwatcher.engine import pg_schema
from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.records import storable
from taskwatcher.engine.settings import busy_timeout

Clock = Callable[[], float]

#: The channel every change of a task is announced on, for waiters (`wait_for_change`).
CHANGES = "taskwatcher_changes"


def kill_channel(taskid: int) -> str:
    """The channel a task's supervisor listens on for kill requests."""
    return f"taskwatcher_kill_{taskid}"


_KILL_CHANNEL = re.compile(r"taskwatcher_kill_([0-9]{1,19})")


class PgDatabase:
    """A checked, upgraded PostgreSQL database, with one connection for one command."""

    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, clock: Clock, *, io_timeout: float) -> None:
        self.location, secret = redacted(url)
        self.busy_timeout = busy_timeout()
        self._url = url
        self._mask = _masker(url, secret)
        self._clock = clock
        self._io_timeout = io_timeout
        self._guard = HangGuard(self.busy_timeout + io_timeout)
        self._channels: list[str] = []
        self._first_wait = True
        self._conn = self._connect()

    def close(self) -> None:
        self._conn.close()

    def check_still_there(self) -> None:
        """Nothing to check: a server's database cannot be swapped under an open connection."""

    @contextmanager
    def transaction(self) -> Iterator[float]:
        """A short write transaction; rows and names are locked as its statements reach them."""
        with self._errors():
            connection = self._connection()
            with self._guard.watching(connection.fileno()), connection.transaction():
                yield self._clock()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor:
        """Run one statement (its marks adapted, its text made storable); StoreError if it fails."""
        with self._errors():
            connection = self._connection()
            with self._guard.watching(connection.fileno()):
                return connection.execute(_adapted(sql), [_param(value) for value in params])

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.execute(sql, params).fetchall()

    def row(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return self.execute(sql, params).fetchone()

    def lock_name(self, name: str) -> None:
        """The transaction's lock of a task name: two hosts checking one name queue here."""
        self.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (NAME_LOCKS, name))

    def announce(self, kind: str, taskid: int) -> None:
        """NOTIFY, delivered at commit: a kill to the task's supervisor, a change to waiters."""
        channel = kill_channel(taskid) if kind == "kill" else CHANGES
        self.execute("SELECT pg_notify(?, ?)", (channel, str(taskid)))

    def listen_for_kills(self, taskid: int) -> None:
        """Hear the kill requests of one task (`notices`); kept across reconnections."""
        self._listen(kill_channel(taskid))

    def notices(self) -> list[int]:
        """Ids of the tasks whose kill was announced since the last call; never waits.

        The channel names the task; the payload is not read (anyone may NOTIFY anything).
        """
        heard = (_KILL_CHANNEL.fullmatch(notify.channel) for notify in self._notifies(0.0))
        return [int(match.group(1)) for match in heard if match]

    def renewed(self, lease: float) -> None:
        """The lease was renewed: a statement still waiting when it runs out is given up,
        so that the supervisor can stop its task on time (`HangGuard.until`)."""
        self._guard.until(time.monotonic() + lease)

    def notices_fileno(self) -> int | None:
        """The connection's socket: readable when an announcement may have come."""
        return None if self._conn.closed else self._conn.fileno()

    def pause_between_batches(self, started: float) -> None:
        """Nothing to do: PostgreSQL queues lock waiters fairly."""

    def wait_for_change(self, timeout: float) -> bool:
        """True once a change was announced since the previous call (at once the first time,
        which starts listening), False after `timeout` seconds."""
        if self._first_wait:
            self._listen(CHANGES)
            self._first_wait = False
            return True
        return any(notify.channel == CHANGES for notify in self._notifies(timeout))

    def recreate(self) -> None:
        """Drop every table and build the latest schema, in one transaction."""
        with self._errors():
            pg_schema.recreate(self._connection())

    # -- internals -----------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        """A connection to an upgraded database, its waits bounded; StoreError if unusable."""
        with self._errors(opening=True):
            connection = psycopg.connect(
                self._url,
                autocommit=True,
                row_factory=dict_row,
                prepare_threshold=None,  # a cached plan would break on the next schema step
                client_encoding="utf8",
                connect_timeout=max(2, round(self._io_timeout)),
                application_name="taskwatcher",
                keepalives=1,
                keepalives_idle=max(1, round(self._io_timeout / 2)),
                keepalives_interval=1,
                keepalives_count=3,
                tcp_user_timeout=round(self._io_timeout * 1000),
            )
            # The unique rule relies on each statement seeing what committed before it.
            connection.isolation_level = IsolationLevel.READ_COMMITTED
            try:
                with self._guard.watching(connection.fileno()):
                    self._set_up(connection)
            except BaseException:
                connection.close()
                raise
            return connection

    def _set_up(self, connection: psycopg.Connection[dict[str, Any]]) -> None:
        """Check the encoding, bound the session's waits, upgrade the schema, listen again
        where it listened."""
        encoding = connection.execute("SHOW server_encoding").fetchone()
        if encoding is None or encoding["server_encoding"] != "UTF8":
            found = None if encoding is None else encoding["server_encoding"]
            raise StoreError(
                f"{self.location}: the database is encoded in {found}, not UTF8: create it"
                " with ENCODING 'UTF8' (task names and feedback are Unicode)"
            )
        connection.execute(
            "SELECT set_config('lock_timeout', %s, false),"
            " set_config('idle_in_transaction_session_timeout', %s, false)",
            (f"{self.busy_timeout * 1000:.0f}", f"{self._io_timeout * 3000:.0f}"),
        )
        pg_schema.prepare(connection, self.location)
        for channel in self._channels:
            connection.execute(f'LISTEN "{channel}"')

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        """The open connection; a new one after a break (the failed statement was reported)."""
        if self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _listen(self, channel: str) -> None:
        if channel not in self._channels:
            self._channels.append(channel)
            self.execute(f'LISTEN "{channel}"')

    def _notifies(self, timeout: float) -> list[psycopg.Notify]:
        with self._errors():
            return list(self._connection().notifies(timeout=timeout, stop_after=1))

    @contextmanager
    def _errors(self, *, opening: bool = False) -> Iterator[None]:
        """Database trouble becomes one StoreError; a broken connection is closed, to be
        opened again by the next statement."""
        try:
            yield
        except psycopg.Error as error:
            if not opening and self._conn.broken:
                self._conn.close()
            doing = "cannot open the database: " if opening else ""
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise StoreError(f"{self.location}: {doing}{self._mask(lines[0])}") from None


#: The first key of the advisory locks of task names (the second is the name's hash).
NAME_LOCKS = 0x7477


class HangGuard:
    """Shuts the socket of a statement that has waited longer than `limit` seconds, or past
    the end of the supervisor's lease (`until`).

    The kernel's timeouts see a dead peer only when nothing answers for it; a proxy or a
    middlebox that still acknowledges keeps a waiting query hung forever. Shutting the socket
    makes psycopg's wait fail at once, with the connection marked broken. Watches nest (a
    transaction, its statements): each start and each end of one gives the rest a new
    `limit`. One daemon thread, started at the first watch, sleeping while none runs.
    """

    def __init__(self, limit: float) -> None:
        self._limit = limit
        self._wake = threading.Condition()
        self._depth = 0
        self._deadline = 0.0
        self._lease_end: float | None = None
        self._fd = -1
        self._thread: threading.Thread | None = None

    def until(self, lease_end: float) -> None:
        """A statement still waiting at `lease_end` (monotonic) is given up, once: the
        supervisor must then be free to stop its task."""
        with self._wake:
            self._lease_end = lease_end
            self._wake.notify()

    @contextmanager
    def watching(self, fd: int) -> Iterator[None]:
        with self._wake:
            self._depth += 1
            self._fd, self._deadline = fd, time.monotonic() + self._limit
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, daemon=True)
                self._thread.start()
            self._wake.notify()
        try:
            yield
        finally:
            with self._wake:
                self._depth -= 1
                self._deadline = time.monotonic() + self._limit

    def _watch(self) -> None:
        with self._wake:
            while True:
                if self._depth == 0:
                    self._wake.wait()
                    continue
                lease_end = float("inf") if self._lease_end is None else self._lease_end
                left = min(self._deadline, lease_end) - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                _shut(self._fd)
                if lease_end <= self._deadline:
                    self._lease_end = None  # the supervisor now knows; its next calls may wait
                self._deadline = time.monotonic() + self._limit  # once per limit at most


def _shut(fd: int) -> None:
    """End both directions of the connection on `fd`, leaving the descriptor to psycopg."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


def redacted(url: str) -> tuple[str, str | None]:
    """The URL as messages and listings show it, and its password: parsed as libpq parses it
    (a password may hold `#`, `?` or `/`), then rebuilt from the user, host, port and
    database alone, so no other part of it can carry the password out."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(a URL libpq cannot read)", None
    user, host, port = parts.get("user"), parts.get("host", ""), parts.get("port")
    socket_folder = host.startswith("/")
    shown = "postgresql://" + (f"{quote(user, safe='')}@" if user else "")
    if socket_folder:  # a unix socket's folder, and its port, go in the query
        query = f"?host={quote(host)}" + (f"&port={port}" if port else "")
        shown += "/" + quote(parts.get("dbname", ""), safe="") + query
    else:
        shown += quote(host, safe=":[],") + (f":{port}" if port else "")
        shown += "/" + quote(parts.get("dbname", ""), safe="")
    return shown, parts.get("password")


def _masker(url: str, secret: str | None) -> Callable[[str], str]:
    """Masks, in a message, the password as written in the URL and as libpq decoded it, where
    it stands as a word of its own (a one-letter password must not blank out every `b`)."""
    forms = {form for form in (secret, *_written_passwords(url)) if form}
    if not forms:
        return lambda text: text
    pattern = re.compile("|".join(rf"(?<![\w%]){re.escape(form)}(?![\w%])" for form in forms))
    return lambda text: pattern.sub("***", text)


def _written_passwords(url: str) -> list[str]:
    """The password as the URL writes it, before decoding: between `user:` and the `@`, and
    in a `password=` parameter (libpq may fail to decode either, and quote it)."""
    found = re.match(r"^[a-z]+://[^:@/]*:([^@]*)@", url)
    return ([found.group(1)] if found else []) + re.findall(r"[?&]password=([^&]*)", url)


_ADAPTED: dict[str, str] = {}


def _adapted(sql: str) -> str:
    """`?` marks as psycopg's `%s`; a literal `%` doubled (statements hold no `?` else)."""
    adapted = _ADAPTED.get(sql)
    if adapted is None:
        adapted = _ADAPTED[sql] = sql.replace("%", "%%").replace("?", "%s")
    return adapted


def _param(value: Any) -> Any:
    """Text as the database keeps it (`records.storable`), NUL, which PostgreSQL's text
    refuses, shown as `\\x00`, as for any byte that is not text."""
    if isinstance(value, str):
        return storable(value).replace("\x00", "\\x00")
    return value
