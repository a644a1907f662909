"""A TCP forwarding proxy whose network can be cut, for tests of what clients do meanwhile.

`cut()` is a blackhole, not a disconnect: no socket is closed and nothing is sent, the proxy
just stops reading and writing, as a cable pulled out somewhere in between would look to a
client that is waiting on its connection.

It is a userspace stand-in, with one difference a test must allow for: the proxy's kernel
still acknowledges what fits in the proxy's receive buffer and answers keepalive probes. So a
cut is noticed by `tcp_user_timeout` only once the client has more to send than that buffer
takes (the buffer is small, `rcvbuf`, and the client's data then waits on a zero window,
which the timeout covers since Linux 5.11); a client that has sent everything and only waits
for a reply keeps waiting, where on a real network its keepalives would end it. Small
statements are such a case: psycopg's lone BEGIN before a transaction's first statement, a
short UPDATE; a test that needs a cut noticed has the client send more than 1 MiB after it.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable
from queue import SimpleQueue
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

#: Bytes read from one side and not yet written to the other, past which reading waits.
_BACKLOG = 256 * 1024
_CHUNK = 64 * 1024


class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.peer = {client: upstream, upstream: client}
        self.pending = {client: bytearray(), upstream: bytearray()}  # to write to that socket
        self.eof = {client: False, upstream: False}  # that socket has sent its end
        self.shut = {client: False, upstream: False}  # its writing half is shut

    def sockets(self) -> tuple[socket.socket, socket.socket]:
        client, upstream = self.peer
        return client, upstream

    def done(self) -> bool:
        return all(self.eof.values()) and not any(self.pending.values())


class Proxy:
    """Forwards 127.0.0.1:`port` to the target; `cut()`, `restore()`, `close()`.

    One thread moves all the bytes, so each of those calls takes effect between two reads or
    writes, and once it returns no byte crosses in either direction until `restore()`.
    Connections opened during a cut wait in the listen queue (the kernel completes their
    handshake) until the restore.
    """

    def __init__(self, target_host: str, target_port: int, *, rcvbuf: int | None = 65536) -> None:
        self.target = (target_host, target_port)
        self.rcvbuf = rcvbuf
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # set before listen(): accepted sockets inherit it
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._interest: dict[socket.socket, int] = {}
        self._links: dict[socket.socket, _Link] = {}
        self._requests: SimpleQueue[tuple[Callable[[], None], threading.Event]] = SimpleQueue()
        self._is_cut = False
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name=f"tcp-proxy:{self.port}")
        self._thread.daemon = True
        self._thread.start()

    @classmethod
    def to(cls, url: str, **kwargs: int | None) -> Proxy:
        """A proxy to the host and port of a libpq URL over TCP (`postgresql://h:p/db`)."""
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"not a TCP URL: {url}")
        return cls(parts.hostname, parts.port or 5432, **kwargs)

    @property
    def connections(self) -> int:
        """How many connections are being proxied."""
        return len(self._links) // 2

    def url_for(self, url: str) -> str:
        """The libpq URL (or key=value string) `url`, reaching its server through this proxy."""
        if not url.startswith(("postgresql://", "postgres://")):
            return f"{url} host=127.0.0.1 hostaddr=127.0.0.1 port={self.port}"
        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        query = [
            (k, v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k not in ("host", "hostaddr", "port")
        ]
        # %-escapes only: libpq does not read `+` as a space
        query_text = urlencode(query, quote_via=quote)
        return urlunsplit(parts._replace(netloc=netloc, query=query_text))

    def cut(self) -> None:
        """Stop moving bytes in both directions, closing nothing."""
        self._ask(lambda: setattr(self, "_is_cut", True))

    def restore(self) -> None:
        """Move bytes again, starting with those held during the cut."""
        self._ask(lambda: setattr(self, "_is_cut", False))

    def close(self) -> None:
        """Close every connection and the listener; safe to repeat."""
        if self._thread.is_alive():
            self._ask(lambda: setattr(self, "_closing", True))
            self._thread.join(5)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ask(self, change: Callable[[], None]) -> None:
        """Have the proxy's thread make a change, and wait until it has."""
        done = threading.Event()
        self._requests.put((change, done))
        self._wake_w.send(b"x")
        if not done.wait(5):
            raise RuntimeError("the proxy's thread did not answer")

    def _loop(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing:
                self._update_interest()
                for key, events in self._selector.select():
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        self._answer_requests()
                        break  # the state may have changed: interests first
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._links:
                        self._move(sock, events)
        finally:
            for sock in [*self._links, self._listener, self._wake_r, self._wake_w]:
                sock.close()
            self._links.clear()
            self._selector.close()
            self._answer_requests()

    def _answer_requests(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        while not self._requests.empty():
            change, done = self._requests.get()
            change()
            done.set()

    def _update_interest(self) -> None:
        wanted = {self._listener: 0 if self._is_cut else selectors.EVENT_READ}
        for sock, link in self._links.items():
            events = 0
            if not self._is_cut:
                peer = link.peer[sock]
                if not link.eof[sock] and len(link.pending[peer]) < _BACKLOG:
                    events |= selectors.EVENT_READ
                if link.pending[sock]:
                    events |= selectors.EVENT_WRITE
            wanted[sock] = events
        for sock in [s for s in self._interest if s not in wanted]:
            self._selector.unregister(sock)
            del self._interest[sock]
        for sock, events in wanted.items():
            current = self._interest.get(sock, 0)
            if events == current:
                continue
            if not events:
                self._selector.unregister(sock)
                del self._interest[sock]
            elif not current:
                self._selector.register(sock, events)
                self._interest[sock] = events
            else:
                self._selector.modify(sock, events)
                self._interest[sock] = events

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        try:
            upstream.settimeout(5)
            upstream.connect(self.target)
        except OSError:
            client.close()  # the client sees its connection end, as with a refused one
            upstream.close()
            return
        client.setblocking(False)
        upstream.setblocking(False)
        link = _Link(client, upstream)
        self._links[client] = self._links[upstream] = link

    def _move(self, sock: socket.socket, events: int) -> None:
        link = self._links[sock]
        peer = link.peer[sock]
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if data:
                    link.pending[peer] += data
                else:
                    link.eof[sock] = True
            if events & selectors.EVENT_WRITE and link.pending[sock]:
                sent = sock.send(link.pending[sock])
                del link.pending[sock][:sent]
            for side in link.sockets():  # an end is passed on once what preceded it is
                if link.eof[link.peer[side]] and not link.pending[side] and not link.shut[side]:
                    link.shut[side] = True
                    side.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            return
        except OSError:
            self._drop(link)
            return
        if link.done():
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        for sock in link.sockets():
            self._links.pop(sock, None)
            if self._interest.pop(sock, 0):
                self._selector.unregister(sock)
            sock.close()
