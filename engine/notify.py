"""systemd's notify protocol, spoken by twrun: programs written for sd_notify(3) run unchanged.

Each task gets a datagram socket of its own, in a 0700 folder of its own (no other user can
send to it, nor flood it), named in the child's `NOTIFY_SOCKET`. A datagram is
newline-separated `KEY=VALUE` pairs, as sd_notify sends them. Only processes of the task are
heard: the socket asks for credentials (SO_PASSCRED), and a datagram whose sender is not one
of the task's processes (`task_member`), or that carries no credentials, is dropped, like one
that is malformed or larger than NOTIFY_BUFFER. File descriptors that come with a
datagram (SCM_RIGHTS) are always closed: for `BARRIER=1` that is the answer its sender waits
for.
"""

from __future__ import annotations

import _socket  # not socket: that module makes enums as it loads, some 1.5 ms a command
import array
import collections
import contextlib
import os
import struct
import subprocess
from collections.abc import Callable, Iterator

from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.procfs import ProcRow, visible_row
from taskwatcher.engine.sources import MaxRuntime
from taskwatcher.engine.stopping import StopReason
from taskwatcher.engine.supervision import Recorder

log = get_logger(__name__)

#: The largest datagram heard, as systemd's own limit (NOTIFY_BUFFER_MAX); longer is dropped.
NOTIFY_BUFFER = 4096
#: Datagrams read per turn of the loop: a flood cannot starve the other sources.
PER_TURN = 256
#: A socket that woke the loop BUSY_TURNS times within BUSY_WINDOW seconds is then read only
#: every NOTIFY_PAUSE seconds, a batch at a time: a task that notifies a hundred times a
#: second costs twrun a few turns a second, while a lone notification is read at once.
BUSY_TURNS = 3
BUSY_WINDOW = 0.1
NOTIFY_PAUSE = 0.05
#: File descriptors one datagram may bring; all are closed.
MAX_FDS = 32
_UCRED = struct.Struct("3i")  # pid, uid, gid
_ANCILLARY = _socket.CMSG_SPACE(_UCRED.size) + _socket.CMSG_SPACE(MAX_FDS * 4)
_MICROSECONDS = 1e6
_U64_DIGITS = 20
_INT_LIMIT = 2**31  # ERRNO= is a C int; 0 is no error


class NotifySocket:
    """The task's notify socket: a path in a 0700 folder of its own (in $XDG_RUNTIME_DIR,
    else $TMPDIR, else /tmp), so no other user can even send to it; credentials on. The
    socket and its folder are removed by `close`."""

    def __init__(self) -> None:
        self._folder = private_folder("taskwatcher-notify-")
        self.address = os.path.join(self._folder, "notify")  # NOTIFY_SOCKET
        self._socket = _socket.socket(
            _socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC
        )
        try:
            self._socket.bind(self.address)
            self._socket.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        except OSError:
            self.close()
            raise

    def fileno(self) -> int:
        return self._socket.fileno()

    def receive(self) -> Iterator[tuple[bytes, tuple[int, int] | None]]:
        """The datagrams waiting, at most PER_TURN, each with its sender's (pid, uid), None
        without credentials; truncated ones are dropped. Descriptors that came along are
        closed."""
        for _ in range(PER_TURN):
            try:
                data, ancillary, flags, _ = self._socket.recvmsg(NOTIFY_BUFFER, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            sender = _sender(ancillary)
            if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
                log.debug("notify: dropped a datagram over %d bytes", NOTIFY_BUFFER)
                continue
            yield data, sender

    def close(self) -> None:
        self._socket.close()
        with contextlib.suppress(OSError):
            os.unlink(self.address)
        with contextlib.suppress(OSError):
            os.rmdir(self._folder)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _sender(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int] | None:
    """The sender's (pid, uid) from SCM_CREDENTIALS; every SCM_RIGHTS descriptor closed on
    the way."""
    sender = None
    for level, kind, data in ancillary:
        if level != _socket.SOL_SOCKET:
            continue
        if kind == _socket.SCM_CREDENTIALS and len(data) >= _UCRED.size:
            pid, uid, _ = _UCRED.unpack_from(data)
            sender = (pid, uid)
        elif kind == _socket.SCM_RIGHTS:
            descriptors = array.array("i")
            descriptors.frombytes(data[: len(data) - len(data) % descriptors.itemsize])
            for fd in descriptors:
                with contextlib.suppress(OSError):
                    os.close(fd)
    return sender


def parse(datagram: bytes) -> list[tuple[str, str]]:
    """The KEY=VALUE pairs of a datagram; lines without `=` or not UTF-8 are skipped."""
    pairs = []
    for line in datagram.split(b"\n"):
        key, equals, value = line.partition(b"=")
        if not equals or not key:
            continue
        try:
            pairs.append((key.decode(), value.decode()))
        except UnicodeDecodeError:
            log.debug("notify: skipped a line that is not UTF-8")
    return pairs


def private_folder(prefix: str) -> str:
    """A new folder only we may enter, named `prefix` and 96 random bits, as mkdtemp makes
    one (whose module, tempfile, costs a supervisor some milliseconds to import)."""
    parent = next(
        folder
        for folder in (os.environ.get("XDG_RUNTIME_DIR"), os.environ.get("TMPDIR"), "/tmp")
        if folder and os.path.isdir(folder)
    )
    while True:
        path = os.path.join(parent, prefix + os.urandom(12).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # 96 random bits taken already: astronomically rare, try again
            continue
        return path


def task_member(child: subprocess.Popen) -> Callable[[int, int], bool]:
    """Whether a sender (pid, uid) is one of the task's processes: its main process, in its
    group, a descendant of it, or an orphan of it that this supervisor adopted as subreaper
    (systemd's NotifyAccess=all, scoped to the task). A sender that already exited cannot be
    looked up (`systemd-notify` without a barrier, a short-lived helper): it is heard when it
    ran as the task's user, the only user besides root who can reach the socket at all."""
    supervisor, user = os.getpid(), os.geteuid()

    def member(pid: int, uid: int) -> bool:
        if pid == child.pid:
            return True
        row = visible_row(pid)
        if row is None:
            return uid == user
        return row.pgid == child.pid or not {child.pid, supervisor}.isdisjoint(_ancestors(row))

    return member


def _ancestors(row: ProcRow) -> list[int]:
    """The pids above a process, read from /proc; empty once any of them is gone."""
    chain = [row.ppid]
    while chain[-1] > 1 and len(chain) < 1000:
        parent = visible_row(chain[-1])
        if parent is None:
            return []
        chain.append(parent.ppid)
    return chain


class Notifications:
    """The notify socket as an event source: each message applied to the supervision."""

    def __init__(
        self,
        notify: NotifySocket,
        recorder: Recorder,
        member: Callable[[int, int], bool],
        *,
        beats: bool,
        max_runtime: MaxRuntime | None = None,
    ) -> None:
        self._notify, self._recorder, self._member = notify, recorder, member
        self._beats, self._max_runtime = beats, max_runtime
        self._turns: collections.deque[float] = collections.deque(maxlen=BUSY_TURNS)
        self._muted_until: float | None = None

    def fileno(self) -> int | None:
        return None if self._muted_until is not None else self._notify.fileno()

    def deadline(self, now: float) -> float | None:
        return self._muted_until

    def handle(self, now: float) -> None:
        self._muted_until = None
        self._turns.append(now)
        if len(self._turns) == BUSY_TURNS and now - self._turns[0] < BUSY_WINDOW:
            self._muted_until = now + NOTIFY_PAUSE
        for datagram, sender in self._notify.receive():
            if sender is None or not self._member(*sender):
                log.debug("notify: ignored a datagram from %s, not the task's", sender)
                continue
            for key, value in parse(datagram):
                self._apply(key, value, now)

    def _apply(self, key: str, value: str, now: float) -> None:
        state = self._recorder.state
        if key == "WATCHDOG" and value == "1":
            if self._beats:
                self._recorder.heard(now, state.wall())
        elif key == "WATCHDOG" and value == "trigger":
            state.stop_for(StopReason.watchdog())
        elif key == "WATCHDOG_USEC" and (usec := _whole(value)):
            state.health.retime(usec / _MICROSECONDS, now)
            self._recorder.note(timeout=usec / _MICROSECONDS)
        elif key == "EXTEND_TIMEOUT_USEC" and (usec := _whole(value)) is not None:
            until = now + usec / _MICROSECONDS
            state.health.extend(until)
            if self._max_runtime is not None:
                self._max_runtime.extend(until)
        elif key == "STATUS":
            self._recorder.status(value)
        elif key == "READY" and value == "1":
            self._recorder.note(ready=state.wall())
        elif key == "STOPPING" and value == "1":
            self._recorder.note(stopping=state.wall())
        elif key == "ERRNO" and (errno := _whole(value)) and errno < _INT_LIMIT:
            state.errno = errno
        elif key != "BARRIER":  # a barrier is answered by closing its descriptors
            log.debug("notify: ignored %s=%s", key, value[:80])


def _whole(text: str) -> int | None:
    """A non-negative decimal integer of 64 bits at most, as systemd reads them; None for
    anything else."""
    if not (text.isascii() and text.isdigit() and len(text) <= _U64_DIGITS):
        return None
    number = int(text)
    return number if number < 2**64 else None
