"""A task's captured output as commands other than its supervisor read and remove it.

The log's path comes from a database row, and anyone able to write the database could point
it at any file. So a path is used only once it is proven to be the task's log: named
`task_<id>.log` (or its rotated `.log.1`) for the row's own id, in a folder no other user
can redirect (`safepath`), a regular file (looked at without following links, opened without
blocking, so never a FIFO, a device or a link's target), with a single link, and owned by
the caller (or, for root, by the user the live row says ran the task). Anything else is
refused (NotALog): never opened further, never removed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from taskwatcher.engine.errors import UnknownTask
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.output import log_name, rotated
from taskwatcher.engine.records import Ended, Task
from taskwatcher.engine.safepath import untrusted_part
from taskwatcher.engine.settings import host_id
from taskwatcher.engine.store import Store
from taskwatcher.grammar.datatype import datatype
from taskwatcher.grammar.errors import TaskwatcherError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

log = get_logger(__name__)

#: Bytes read at once, forwards or (for the last lines) backwards from the end.
BLOCK = 64 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Write = Callable[[bytes], object]


class NoLog(TaskwatcherError, FileNotFoundError):
    """The task's output was not captured, or its log is gone."""


class NotALog(TaskwatcherError, PermissionError):
    """The file a row names as a task's log is not proven to be one: it is left alone."""


@datatype(frozen=True)
class LogPart:
    """One opened file of a log (the rotated one or the current one), proven to be the log's;
    `size` is its size when opened, which bounds a one-off read."""

    fd: int
    identity: tuple[int, int]
    size: int

    def chunks(self) -> Iterator[bytes]:
        """The file from its start to `size`, a block at a time."""
        offset = 0
        while offset < self.size:
            data = os.pread(self.fd, min(BLOCK, self.size - offset), offset)
            if not data:
                return
            offset += len(data)
            yield data


class TaskLog:
    """Where a task's log is, once its recorded path passed the name check; every opening
    checks the folder and each file again."""

    def __init__(self, taskid: int, logfile: str, uid: int | None = None) -> None:
        self.taskid = taskid
        self.logfile = logfile
        path = Path(logfile)
        if "\0" in logfile or not path.is_absolute() or path.name != log_name(taskid):
            self._refuse(f"it is not named {log_name(taskid)} in an absolute folder")
        self._name = path.name
        self._folder = path.parent
        self._resolved: Path | None = None  # the folder as last checked
        caller = os.geteuid()
        self._owners = {caller} | ({uid} if caller == 0 and uid is not None else set())

    def open_parts(self) -> list[LogPart]:
        """The rotated file and the current one, those that exist, oldest first; NotALog when
        one fails the checks. A rotation while they are opened is noticed (the rotated file
        is then the current one just opened) and the current file is opened again."""
        current = self._checked_folder() / self._name
        parts: list[LogPart] = []
        try:
            for path in (current, rotated(current)):
                if (part := self._open(path)) is not None:
                    parts.insert(0, part)
            if len(parts) == 2 and parts[0].identity == parts[1].identity:
                os.close(parts.pop().fd)
                if (part := self._open(current)) is not None:
                    parts.append(part)
        except NotALog:
            close_all(parts)
            raise
        return parts

    def current_identity(self) -> tuple[int, int] | None:
        """Which file the log's current name holds now (a look, nothing opened); None: none."""
        folder = self._resolved or self._checked_folder()
        try:
            return _identity(os.lstat(folder / self._name))
        except FileNotFoundError:
            return None

    def remove(self) -> None:
        """Delete the current and the rotated file, each only once proven the log's (NotALog
        leaves the rest alone). A missing file or folder is nothing to remove."""
        try:
            current = self._checked_folder() / self._name
        except NoLog:
            return
        for path in (current, rotated(current)):
            part = self._open(path)
            if part is None:
                continue
            try:
                if _identity(os.lstat(path)) == part.identity:
                    path.unlink()
            except FileNotFoundError:
                pass
            finally:
                os.close(part.fd)

    def gone(self) -> NoLog:
        """The error for a log that was captured but is no longer there."""
        return NoLog(f"task {self.taskid} has no log (its log was removed)")

    def _checked_folder(self) -> Path:
        """The folder, resolved, once no other user could redirect it; NoLog when it is gone."""
        try:
            problem = untrusted_part(self._folder)
        except FileNotFoundError:
            raise self.gone() from None
        except OSError as error:
            self._refuse(f"its folder cannot be checked ({error.strerror})")
        if problem:
            self._refuse(problem)
        self._resolved = Path(os.path.realpath(self._folder))
        return self._resolved

    def _open(self, path: Path) -> LogPart | None:
        """The file opened and proven the log's; None when there is none."""
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as error:
            self._refuse(f"{path.name} cannot be looked at ({error.strerror})")
        self._check(path, before)  # a FIFO or a device is refused before it is ever opened
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as error:
            self._refuse(f"{path.name} cannot be opened ({error.strerror})")
        status = os.fstat(fd)
        try:
            self._check(path, status)
            if _identity(status) != _identity(before):
                self._refuse(f"{path.name} was replaced while it was opened")
        except NotALog:
            os.close(fd)
            raise
        return LogPart(fd, _identity(status), status.st_size)

    def _check(self, path: Path, status: os.stat_result) -> None:
        if stat.S_ISLNK(status.st_mode):
            self._refuse(f"{path.name} is a symbolic link")
        if not stat.S_ISREG(status.st_mode):
            self._refuse(f"{path.name} is not a regular file")
        if status.st_uid not in self._owners:
            self._refuse(f"{path.name} belongs to uid {status.st_uid}")
        if status.st_nlink != 1:
            self._refuse(f"{path.name} has {status.st_nlink} links")  # a hard link planted

    def _refuse(self, reason: str) -> NoReturn:
        raise NotALog(
            f"task {self.taskid}: its log {self.logfile} is not a taskwatcher log: {reason}"
        )


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def close_all(parts: Iterable[LogPart]) -> None:
    """Close opened parts of a log."""
    for part in parts:
        os.close(part.fd)


def record_of(store: Store, taskid: int) -> Task | Ended:
    """The live task, else its history record; UnknownTask for an id no task ever had."""
    task = store.get_task(taskid)
    return task if task is not None else history_record(store, taskid)


def elsewhere(store: Store, record: Task | Ended) -> str | None:
    """The host whose disk holds the task's log, when it is not this one (a database of many
    hosts; with sqlite every task is taken for this host's)."""
    if not store.many_hosts or record.host in (None, host_id()):
        return None
    return record.host


def pushed_lines(record: Task | Ended, count: int | None) -> list[bytes]:
    """The last lines of the output as the task's supervisor pushed them (live) or history
    kept them (ended): what another host can show of a log it cannot read."""
    tail = record.output_tail or ""
    lines = [line.encode() for line in tail.split("\n")] if tail else []
    return lines if count is None else lines[-count:] if count else []


def log_of(record: Task | Ended) -> TaskLog:
    """The log a row names; NoLog for a task that never started or whose output was not
    captured (`twrun --output inherit`). Between two attempts, and after a kill before an
    attempt started, the log is the earlier attempts'."""
    if record.logfile is None:
        if record.starttime is None and record.attempt == 1:
            when = "has not" if isinstance(record, Task) else "never"
            raise NoLog(f"task {record.taskid} has no log (it {when} started)")
        raise NoLog(f"task {record.taskid} has no log (its output was not captured)")
    return TaskLog(record.taskid, record.logfile, record.uid if isinstance(record, Task) else None)


class OpenLog:
    """A log's files, opened and checked, for one read of what they hold now; NoLog when
    neither file is there."""

    def __init__(self, tasklog: TaskLog) -> None:
        self.parts = tasklog.open_parts()
        if not self.parts:
            raise tasklog.gone()

    def __enter__(self) -> OpenLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        close_all(self.parts)

    @property
    def rotated(self) -> bool:
        """Whether the log rotated: output older than what is kept may be gone."""
        return len(self.parts) == 2

    @property
    def kept(self) -> int:
        """Bytes of output kept on disk."""
        return sum(part.size for part in self.parts)

    def chunks(self) -> Iterator[bytes]:
        """Everything kept, in order: the rotated file, then the current one."""
        for part in self.parts:
            yield from part.chunks()

    def lines(self) -> Iterator[bytes]:
        """Every line kept, without its newline, the two files read as one stream."""
        pending = b""
        for chunk in self.chunks():
            *complete, pending = (pending + chunk).split(b"\n")
            yield from complete
        if pending:
            yield pending

    def last_lines(self, count: int) -> tuple[list[bytes], bool]:
        """The last `count` lines without their newlines, and whether they reach back to the
        start of what is kept. Read backwards from the end a block at a time, so the last
        lines of a large log cost about what they hold."""
        blocks: list[bytes] = []
        newlines = 0
        for part in reversed(self.parts):
            end = part.size
            while end > 0:
                start = max(0, end - BLOCK)
                block = os.pread(part.fd, end - start, start)
                if not blocks:
                    newlines -= block.endswith(b"\n")  # the last line's own newline
                blocks.append(block)
                newlines += block.count(b"\n")
                end = start
                if newlines >= count:  # the line before the last `count` ones has begun
                    return _lines(blocks)[-count:], False
        return _lines(blocks)[-count:], True


def _lines(backwards: Sequence[bytes]) -> list[bytes]:
    """Blocks read from the end towards the start, as lines without their newlines."""
    data = b"".join(reversed(backwards))
    return data.removesuffix(b"\n").split(b"\n") if data else []


class LogSweep:
    """Removes the logs of the history rows `clear` deleted, counting those left in place."""

    def __init__(self) -> None:
        self.left = 0

    def remove(self, logs: Iterable[tuple[int, str]]) -> None:
        """For `clear_history(logs=...)`: the (taskid, logfile) of a batch's rows, committed."""
        for taskid, logfile in logs:
            try:
                TaskLog(taskid, logfile).remove()
            except OSError as error:  # NotALog included
                self.left += 1
                # The path comes from the database: shown as a repr, so it cannot drive a terminal.
                log.info("left in place: %r", str(error) if isinstance(error, NotALog) else error)


def history_record(store: Store, taskid: int) -> Ended:
    """A finished task's record; UnknownTask for an id no task ever had."""
    ended = store.history_of(taskid)
    if ended is None:
        raise UnknownTask(f"no task {taskid}")
    return ended
