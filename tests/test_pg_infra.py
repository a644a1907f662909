"""The PostgreSQL test infrastructure itself: the fixtures' databases, the cuttable proxy.

The timeout test is the reason the proxy exists: a connection set up with tcp_user_timeout
gives up on a cut network within seconds, where one without it waits as long as the cut lasts.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

if not os.environ.get("CI"):  # in CI a missing driver is an error, not a skip
    pytest.importorskip("psycopg")

import psycopg

from tests.tcp_proxy import Proxy

#: More than the proxy's and the kernel's buffers take, so that the client has data waiting
#: on the cut (see tests.tcp_proxy: a client with nothing left to send notices no cut).
PAYLOAD = "x" * (4 * 1024 * 1024)
QUERY = "SELECT length(%s)"
#: Both cut tests' connections: keepalives as a deployment would set them (alone they end
#: nothing here: the proxy's kernel answers the probes); autocommit, since otherwise the
#: first statement is a lone BEGIN, small enough for the proxy's kernel to acknowledge, and
#: the cut would go unnoticed (see tests.tcp_proxy).
OPTIONS: dict[str, Any] = {
    "autocommit": True,
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 1,
    "keepalives_interval": 1,
    "keepalives_count": 1,
}


class Bounded:
    """Runs a call in a thread, so a test can wait for it with a bound and never hang."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.began = time.monotonic()
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as e:
            self.error = e
        self.ended = time.monotonic()

    def wait(self, seconds: float) -> bool:
        """Whether the call ended within `seconds`."""
        self._thread.join(seconds)
        return not self._thread.is_alive()

    @property
    def took(self) -> float:
        assert self.ended is not None
        return self.ended - self.began


def one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def test_fresh_database_over_tcp(pg_url: str) -> None:
    with psycopg.connect(pg_url, connect_timeout=10) as conn:
        assert one(conn, "SELECT 1") == 1
        assert conn.info.host == "127.0.0.1"
        assert conn.info.dbname.startswith("tw_")
        assert one(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


def test_same_database_over_the_socket(pg_url: str, pg_socket_url: str) -> None:
    with psycopg.connect(pg_socket_url, connect_timeout=10) as conn:
        assert one(conn, "SELECT 1") == 1
        assert conn.info.host.startswith("/")
        assert conn.info.dbname == psycopg.conninfo.conninfo_to_dict(pg_url)["dbname"]


def test_proxy_forwards(pg_url: str) -> None:
    with (
        Proxy.to(pg_url) as proxy,
        psycopg.connect(proxy.url_for(pg_url), connect_timeout=10) as conn,
    ):
        assert conn.info.port == proxy.port
        assert one(conn, QUERY, (PAYLOAD,)) == len(PAYLOAD)
        assert proxy.connections == 1


def test_cut_network_ends_a_connection_with_tcp_user_timeout(pg_url: str) -> None:
    with Proxy.to(pg_url) as proxy:
        url = proxy.url_for(pg_url)
        with psycopg.connect(url, tcp_user_timeout=1000, **OPTIONS) as conn:
            assert one(conn, "SELECT 1") == 1
            proxy.cut()
            query = Bounded(lambda: one(conn, QUERY, (PAYLOAD,)))
            if not query.wait(15):
                proxy.close()  # closed sockets end the call, so the thread does not linger
                pytest.fail("the query hung on the cut network despite tcp_user_timeout")
        assert isinstance(query.error, psycopg.OperationalError), query.error or query.result
        assert query.took < 15


def test_without_tcp_user_timeout_a_cut_hangs_until_restored(pg_url: str) -> None:
    """The control: the cut really is a blackhole, and restore() resumes the same bytes."""
    with Proxy.to(pg_url) as proxy:
        url = proxy.url_for(pg_url)
        with psycopg.connect(url, **OPTIONS) as conn:
            proxy.cut()
            query = Bounded(lambda: one(conn, QUERY, (PAYLOAD,)))
            assert not query.wait(2.5), query.error or query.result
            proxy.restore()
            assert query.wait(15), "the query did not finish after the restore"
            assert query.error is None
            assert query.result == len(PAYLOAD)
