"""Waking a supervisor to read its kill request, without signalling anything.

A signal to a pid read from the database could reach any process a forged row names, so
`twctl kill` never signals a supervisor: it writes the request on the row, then sends an empty
datagram to the supervisor's socket in Linux's abstract namespace, named after the task's
token digest. Only twrun binds names under this prefix, and all a datagram can do is make a
supervisor read its own row earlier; one that is not woken (another network namespace,
another host) still reads it once a second.
"""

from __future__ import annotations

import socket
from contextlib import suppress

_PREFIX = b"\0taskwatcher/"


def address(token_hash: str) -> bytes:
    """The abstract socket name of the supervisor of the task whose token has this digest."""
    return _PREFIX + token_hash.encode("ascii", "replace")[:64]


class WakeSocket:
    """The supervisor's end: readable when someone asks it to read its kill request now."""

    def __init__(self, token_hash: str) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
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
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    with socket.socket(socket.AF_UNIX, kind) as sender:
        try:
            sender.sendto(b"", address(token_hash))
        except OSError:  # nobody bound it (supervisor gone, other namespace), or a full queue
            return False
    return True
