"""Capturing a task's stdout and stderr: the pipes as event sources of the supervision loop.

Each pipe is a source: what it reads goes to the one log (so both streams keep their order of
arrival), to the tail history keeps and, with `tee`, to the same stream of twrun. When twrun's
own stream breaks (its reader went away: `twrun -- yes | head -1`), the task's pipe for that
stream is closed, so the task gets EPIPE or SIGPIPE as it would have without twrun.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from enum import StrEnum

from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.output import (
    LOG_FLUSH_TIMEOUT,
    TEE_FLUSH_TIMEOUT,
    LogFile,
    Tail,
    Writer,
    write_all,
)

log = get_logger(__name__)

#: Bytes read from a pipe at once; the pipes are made this large when the system allows.
READ_SIZE = 1024 * 1024
#: Output counts as a heartbeat at most this often: a busy pipe must not busy the machine.
HEARTBEAT_PACE = 0.1
#: Seconds the end of a task spends reading what its pipes still hold.
DRAIN_TIME = 2.0


class OutputMode(StrEnum):
    """What happens to a task's stdout and stderr."""

    TEE = "tee"  # captured, and copied to twrun's own stdout and stderr
    LOG = "log"  # captured only
    INHERIT = "inherit"  # not captured: the task writes to twrun's stdout and stderr itself

    @property
    def pipes(self) -> int:
        """The pipes the output goes through: one each to keep the streams apart for tee,
        one for both when only logged (the log then has their exact order), none inherited."""
        return {OutputMode.TEE: 2, OutputMode.LOG: 1, OutputMode.INHERIT: 0}[self]


class Capture:
    """A task's log, its tail, and the copies to twrun's own output while the task runs."""

    def __init__(self, logfile: LogFile, tee: bool) -> None:
        self.logfile = logfile
        self.tail = Tail()
        self._room = Doorbell()
        self._log = Writer("log", logfile.write, self._room.ring)
        self._copies = (
            {fd: Writer(f"tee-{fd}", write_all(fd), self._room.ring) for fd in (1, 2)}
            if tee
            else {}
        )
        self.pipes: list[OutputPipe] = []
        self._log_failure_said = False
        self.incomplete: str | None = None

    @property
    def sources(self) -> list[OutputPipe | Doorbell]:
        """What the loop watches: the doorbell the writers ring, then the pipes."""
        return [self._room, *self.pipes]

    def watch(self, task_fd: int, own_fd: int, heartbeat: Callable[[float], None] | None) -> None:
        """Read the task's end of a pipe; `own_fd` (1 or 2) is the twrun stream it is copied to."""
        _enlarge(task_fd)
        os.set_blocking(task_fd, False)
        self.pipes.append(OutputPipe(self, task_fd, self._copies.get(own_fd), own_fd, heartbeat))

    def record(self, data: bytes, copy: Writer | None) -> None:
        self._log.offer(data)
        self.tail.add(data)
        if copy is not None:
            copy.offer(data)
        self._say_log_failure()

    def _say_log_failure(self) -> None:
        """Warn once that the log could not be written: as soon as it shows, or at the end
        (the writer's thread may fail after the last output was read)."""
        if self._log.error is not None and not self._log_failure_said:
            self._log_failure_said = True
            error = self._log.error
            self._warn(f"cannot write the log {self.logfile.path}: {error.strerror or error}")

    def note(self, text: str) -> None:
        """A line of twrun's own in the log and the tail, on a line of its own."""
        line = ("" if self.tail.ends_line else "\n") + f"[twrun] {text}\n"
        self._log.offer(line.encode())
        self.tail.add(line.encode())

    def backlogged(self, copy: Writer | None) -> bool:
        return self._log.full or (copy is not None and copy.full)

    def finish(self) -> str | None:
        """Read what the pipes still hold, let the writers finish; the tail for history.
        When the log misses something, `incomplete` says why afterwards."""
        give_up = time.monotonic() + DRAIN_TIME
        for pipe in self.pipes:
            pipe.drain(give_up)
        for fd, copy in self._copies.items():
            if not copy.close(TEE_FLUSH_TIMEOUT) and copy.error is None:
                self.note(f"output to fd {fd} not finished within {TEE_FLUSH_TIMEOUT:g} s")
        written = self._log.close(LOG_FLUSH_TIMEOUT)
        if not self._log.busy:  # finished, a failed write included: its file is done with
            self.logfile.close()
        if not written and self._log.error is None:
            self.incomplete = f"not written within {LOG_FLUSH_TIMEOUT:g} s of the end"
            self._warn(f"the log {self.logfile.path} may miss the end of the output")
        if self._log.error is not None:
            self.incomplete = self._log.error.strerror or str(self._log.error)
            self._say_log_failure()
        if not any(writer.busy for writer in (self._log, *self._copies.values())):
            self._room.close()  # else a writer still stuck may ring it: left to the exit
        return self.tail.text()

    @staticmethod
    def _warn(message: str) -> None:
        log.warning("%s", message)


class OutputPipe:
    """One of the task's output pipes, read by the loop while its writers have room."""

    def __init__(
        self,
        capture: Capture,
        fd: int,
        copy: Writer | None,
        own_fd: int,
        heartbeat: Callable[[float], None] | None,
    ) -> None:
        self._capture, self._fd, self._copy, self._own_fd = capture, fd, copy, own_fd
        self._heartbeat = heartbeat
        self._last_beat: float | None = None

    def fileno(self) -> int | None:
        if self._fd is None or self._capture.backlogged(self._copy):
            return None
        return self._fd

    def deadline(self, now: float) -> float | None:
        broken = self._copy is not None and self._copy.error is not None
        return now if self._fd is not None and broken else None

    def handle(self, now: float) -> None:
        if self._fd is None:
            return
        if self._copy is not None and self._copy.error is not None:
            self._copy_failed()
            if self._fd is None:
                return
        # Read until the pipe is empty (or the writers full): one turn of the loop per burst.
        while not self._capture.backlogged(self._copy) and self._read(now):
            pass

    def drain(self, give_up: float) -> None:
        """At the end: everything still in the pipe, as long as it comes before `give_up`."""
        while self._fd is not None and time.monotonic() < give_up:
            if self._copy is not None and self._copy.error is not None:
                self._copy_failed()
            elif not self._read(time.monotonic()):
                break
        self._close()

    def _read(self, now: float) -> bool:
        """One read; False once nothing more is there for now (or ever)."""
        assert self._fd is not None
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as error:
            self._capture.note(f"reading the task's fd {self._own_fd} failed: {error.strerror}")
            self._close()
            return False
        if not data:
            self._close()
            return False
        self._capture.record(data, self._copy)
        if self._heartbeat is not None and (
            self._last_beat is None or now - self._last_beat >= HEARTBEAT_PACE
        ):
            self._last_beat = now
            self._heartbeat(now)
        return True

    def _copy_failed(self) -> None:
        """Copying to twrun's own stream failed. Its reader went away (EPIPE): close the
        task's pipe for it, so the task meets EPIPE or SIGPIPE as it would have without
        twrun. Any other failure (a full disk, a closed descriptor) is twrun's own: the copy
        stops and the log goes on. Either way the log says so."""
        assert self._copy is not None and self._copy.error is not None
        stream = "stdout" if self._own_fd == 1 else "stderr"
        error, self._copy = self._copy.error, None
        if error.errno == errno.EPIPE:
            self._capture.note(
                f"twrun's {stream} broke (its reader is gone): the task's {stream} was closed"
            )
            self._close()
            return
        reason = error.strerror or str(error)
        self._capture.note(f"copying to twrun's {stream} failed ({reason}): logged only from now")
        log.warning("cannot copy the task's %s to twrun's own: %s", stream, reason)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Doorbell:
    """A pipe the writer threads ring to wake the loop: a backlog has room again, or a write
    failed. Rings coalesce: a full pipe already says what a new ring would."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def ring(self) -> None:
        with contextlib.suppress(OSError):  # full (BlockingIOError): it rings already
            os.write(self._write, b"\0")

    def fileno(self) -> int | None:
        return self._read

    def deadline(self, now: float) -> float | None:
        return None

    def handle(self, now: float) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def _enlarge(fd: int) -> None:
    """Ask for a pipe of READ_SIZE: fewer, larger reads when a task writes fast."""
    # Over /proc/sys/fs/pipe-max-size for this user, the default pipe works too.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, READ_SIZE)
