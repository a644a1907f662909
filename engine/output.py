"""A task's captured output: one log file in order of arrival, rotated once at its limit, a
copy to the supervisor's own stdout/stderr, and the end of it for history.

The supervision loop only reads the task's pipes and hands the bytes on: every write (to the
log, which may sit on a slow disk, and to twrun's stdout, whose reader may be slow) happens in
a thread of its own with a bounded backlog. A full backlog stops the loop reading that pipe,
so the task meets the same back-pressure as writing to a slow reader directly, at most one
pipe buffer later, and no deadline of the loop ever waits on a write.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from taskwatcher.engine.errors import FeedpathUnusable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading

#: Bytes a writer may have waiting before the loop stops reading the pipes that feed it.
BACKLOG_LIMIT = 4 * 1024 * 1024
#: The most a writer joins into one write.
WRITE_SIZE = 1024 * 1024
#: What history keeps of the output: its last lines, and at most this many bytes of them.
TAIL_LINES = 20
TAIL_BYTES = 8 * 1024
#: The default size of a log file; past it the log rotates once to `.log.1`.
DEFAULT_LOG_MAX_BYTES = 16 * 1024 * 1024
#: Seconds the end of a task waits for its log, then for the copy to twrun's own output.
LOG_FLUSH_TIMEOUT = 10.0
TEE_FLUSH_TIMEOUT = 1.0
#: Free space a log leaves on its file system, for the database that usually shares it:
#: this much, or a tenth of a smaller file system; looked at before every write.
LOG_RESERVE = 64 * 1024 * 1024
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_APPEND
#: An earlier attempt's log, carried on: never through a link, never blocked on a FIFO.
_CONTINUE_FLAGS = (_CREATE_FLAGS & ~(os.O_CREAT | os.O_EXCL)) | os.O_NONBLOCK


def log_name(taskid: int) -> str:
    """`task_<id>.log`: the only part of a log's path derived for a task, from an integer."""
    return f"task_{int(taskid)}.log"


def rotated(path: Path) -> Path:
    """Where a log goes when it reaches its limit: `task_<id>.log.1`."""
    return path.with_name(path.name + ".1")


class LogFile:
    """A task's log, written by its writer thread alone; at most `max_bytes` in each of the
    current file and the one rotated before it."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_LOG_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("a log needs room for at least one byte")
        self.path = path
        self.max_bytes = max_bytes
        self._fd: int | None = None
        self._size = 0
        #: (device, inode, size) of the file as it was closed; None before
        self.identity: tuple[int, int, int] | None = None

    def create(self) -> None:
        """Remove leftovers of an earlier task of the same id, then make the file anew:
        0600, ours, never through a link. FeedpathUnusable when that fails."""
        try:
            for leftover in (self.path, rotated(self.path)):
                leftover.unlink(missing_ok=True)
            self._open_new()
        except OSError as error:
            raise FeedpathUnusable(f"cannot create the log {self.path}: {error.strerror}") from None

    def carry_on(self, earlier: tuple[int, int, int] | None) -> None:
        """Append the task's next attempt to the file the attempt before wrote and closed
        (`earlier`, its identity then), whose size counts towards the rotation. Anything
        else in its place (nothing, a link, a FIFO, another file, one with a second name or
        changed since) gives way to a new file; FeedpathUnusable when that cannot be made."""
        try:
            fd = os.open(self.path, _CONTINUE_FLAGS)
        except OSError:
            fd = None
        if fd is not None:
            status = os.fstat(fd)
            if _carries_on(status, earlier):
                os.set_blocking(fd, True)
                self._fd, self._size = fd, status.st_size
                return
            os.close(fd)
        try:
            self.path.unlink(missing_ok=True)
            self._open_new()
        except OSError as error:
            raise FeedpathUnusable(f"cannot reopen the log {self.path}: {error.strerror}") from None

    def _open_new(self) -> None:
        """Make the file, which must not be there: 0600, ours, never through a link."""
        self._fd = os.open(self.path, _CREATE_FLAGS, 0o600)
        self._size = 0

    def write(self, data: bytes) -> None:
        """Append, rotating once the file is full, so the two files never exceed the limit."""
        self._keep_reserve(len(data))
        view = memoryview(data)
        while view:
            if self._size >= self.max_bytes:
                self._rotate()
            room = self.max_bytes - self._size
            written = os.write(self._descriptor(), view[:room])
            self._size += written
            view = view[written:]

    def _keep_reserve(self, coming: int) -> None:
        """ENOSPC before the log eats the space the database needs to record the task."""
        space = os.fstatvfs(self._descriptor())
        reserve = min(LOG_RESERVE, space.f_blocks * space.f_frsize // 10)
        if space.f_bavail * space.f_frsize - coming < reserve:
            raise OSError(
                errno.ENOSPC,
                f"less than {reserve / 1024 / 1024:.1f} MiB free, kept for the database",
            )

    def close(self) -> None:
        if self._fd is not None:
            self.identity = _identity(os.fstat(self._fd))
            os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        os.close(self._descriptor())
        self._fd = None
        os.replace(self.path, rotated(self.path))
        self._open_new()

    def _descriptor(self) -> int:
        if self._fd is None:
            raise OSError(f"{self.path} is closed")
        return self._fd


def _carries_on(status: os.stat_result, earlier: tuple[int, int, int] | None) -> bool:
    """Whether the file found is the earlier attempt's log: the very file it closed, or,
    when it could not close it (a writer stuck past the flush timeout), at least a regular
    file of ours with one name, rather than the whole log lost."""
    if status.st_nlink != 1:
        return False
    if earlier is not None:
        return _identity(status) == earlier
    return stat.S_ISREG(status.st_mode) and status.st_uid == os.geteuid()


def _identity(status: os.stat_result) -> tuple[int, int, int]:
    """What tells a file from another one made in its place since (an inode number is
    reused at once): its device, inode and size."""
    return status.st_dev, status.st_ino, status.st_size


class Writer:
    """A thread that writes what it is given, in order, so the caller never waits on a write.

    Once a write fails the writer keeps the error, drops what is left and takes nothing more.
    `wake` is called (from the writer's thread) when a full backlog has room again, and when
    a write failed: the moments its feeder must look again.
    """

    def __init__(
        self, name: str, write: Callable[[bytes], object], wake: Callable[[], None]
    ) -> None:
        self._write = write
        self._wake = wake
        self._chunks: collections.deque[bytes] = collections.deque()
        self._pending = 0
        self._closing = False
        import threading  # here: twctl reads this module for its log files, with no thread

        self._changed = threading.Condition()
        self.error: OSError | None = None
        self._name = name
        self._thread: threading.Thread | None = None  # started by the first write

    @property
    def full(self) -> bool:
        return self._pending >= BACKLOG_LIMIT

    @property
    def busy(self) -> bool:
        """Still in a write (or holding some): its thread may yet call `wake`."""
        return self._thread is not None and self._thread.is_alive()

    def offer(self, data: bytes) -> None:
        with self._changed:
            if self.error is None and not self._closing:
                self._chunks.append(data)
                self._pending += len(data)
                if self._thread is None:  # a task that writes nothing costs no thread
                    self._start()
                self._changed.notify()

    def _start(self) -> None:
        import threading

        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        try:
            thread.start()
        except RuntimeError as error:  # out of threads: as a write that failed
            self.error = OSError(errno.EAGAIN, str(error))
            self._chunks.clear()
            self._pending = 0
            return
        self._thread = thread

    def close(self, timeout: float) -> bool:
        """Finish what is waiting, for at most `timeout` seconds; whether all of it was written."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.busy and self.error is None

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._chunks and not self._closing:
                    self._changed.wait()
                if not self._chunks:
                    return
                chunk = self._take()
            try:
                self._write(chunk)
            except OSError as error:
                with self._changed:
                    self.error = error
                    self._chunks.clear()
                    self._pending = 0
                self._wake()
                return
            with self._changed:
                was_full = self.full
                self._pending -= len(chunk)
                if was_full and not self.full:
                    self._wake()

    def _take(self) -> bytes:
        """What is waiting, joined up to WRITE_SIZE: one write for many small reads."""
        taken = [self._chunks.popleft()]
        size = len(taken[0])
        while self._chunks and size + len(self._chunks[0]) <= WRITE_SIZE:
            taken.append(self._chunks.popleft())
            size += len(taken[-1])
        return taken[0] if len(taken) == 1 else b"".join(taken)


def write_all(fd: int) -> Callable[[bytes], None]:
    """A write of every byte to `fd` (a terminal, pipe or file that may take them piecemeal)."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


class Tail:
    """The last bytes of the output and of the supervisor's notes, for history."""

    def __init__(self) -> None:
        self._kept = bytearray()
        self.ends_line = True

    def add(self, data: bytes) -> None:
        if not data:
            return
        self._kept += data
        if len(self._kept) > 2 * TAIL_BYTES:
            del self._kept[:-TAIL_BYTES]
        self.ends_line = data.endswith(b"\n")

    def text(self) -> str | None:
        """The last TAIL_LINES lines within TAIL_BYTES; None when there was no output at all.

        Bytes that are not UTF-8 read as `\\xNN`; control characters are kept as they are
        (JSON escapes them, terminals get them escaped by the CLI)."""
        if not self._kept:
            return None
        kept = bytes(self._kept[-TAIL_BYTES:])
        if len(self._kept) > TAIL_BYTES:  # cut where it may split a character: start after it
            kept = kept[next((i for i, byte in enumerate(kept[:4]) if byte & 0xC0 != 0x80), 0) :]
        lines = kept.removesuffix(b"\n").split(b"\n")[-TAIL_LINES:]
        return b"\n".join(lines).decode(errors="backslashreplace")
