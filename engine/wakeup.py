"""Waking a supervisor to read its kill request, without signalling anything.

A signal to a pid read from the database could reach any process a forged row names, so
`twctl kill` never signals a supervisor: it writes the request on the row, then sends an empty
datagram to the supervisor's socket in Linux's abstract namespace, whose name derives from the
task's token digest. The same name tells housekeeping whether a supervisor still runs. Only
twrun binds names under this prefix, and all a datagram can do is make a supervisor read its
own row earlier (at most every WAKE_PAUSE seconds, however many come); one that is not woken
(another network namespace, another host) still reads it once a second.
"""

from __future__ import annotations

import _socket  # not socket: that module makes enums as it loads, some 1.5 ms a command
from contextlib import closing, suppress

from taskwatcher.grammar.digest import sha256_hex

_PREFIX = b"\0taskwatcher/"
#: A flood of datagrams makes a supervisor read its row no more often than this.
WAKE_PAUSE = 0.1


def address(token_hash: str) -> bytes:
    """The abstract socket name of the supervisor of the task whose token has this digest.

    Derived from the digest, not the digest itself: every user can list the names of
    abstract sockets (/proc/net/unix), and a digest read there could be written into a
    forged row that would then pass for the task's.
    """
    return _PREFIX + sha256_hex(b"taskwatcher-wake:" + token_hash.encode()).encode()


def valid(token_hash: object) -> bool:
    """Whether a value read from a row can be a token digest at all (an edited row may hold
    anything)."""
    return isinstance(token_hash, str) and len(token_hash) == 64 and token_hash.isalnum()


class WakeSocket:
    """The supervisor's end: readable when someone asks it to read its kill request now."""

    def __init__(self, token_hash: str) -> None:
        self._socket = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            self._socket.bind(address(token_hash))
            self._socket.setblocking(False)
        except BaseException:
            self._socket.close()
            raise

    def fileno(self) -> int:
        return self._socket.fileno()

    def drain(self) -> int:
        """Read every waiting datagram; returns how many there were."""
        count = 0
        with suppress(BlockingIOError):
            while True:
                self._socket.recv(1)
                count += 1
        return count

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> WakeSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wake(token_hash: str) -> bool:
    """Ask the task's supervisor to read its kill request now; False when nobody listens."""
    with closing(_sender()) as sender:
        try:
            sender.sendto(b"", address(token_hash))
        except OSError:  # nobody bound it (supervisor gone, other namespace), or a full queue
            return False
    return True


def is_listening(token_hash: str) -> bool:
    """Whether a supervisor of the task is running: its socket is bound (in this namespace).

    Unlike a pid and create time, this does not move with the wall clock.
    """
    with closing(_sender()) as probe:
        try:
            probe.connect(address(token_hash))
        except OSError:  # ECONNREFUSED: nobody has the name
            return False
    return True


def _sender() -> _socket.socket:
    kind = _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK
    return _socket.socket(_socket.AF_UNIX, kind)
