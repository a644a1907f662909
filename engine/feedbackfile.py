"""A task's feedback file, as its supervisor alone handles it: made safely, watched, read.

Only the supervisor ever opens the file. It makes the file itself before the launch (a leftover
removed, then created exclusively, never through a symbolic link), in a folder no other user
can write to, and reads it without following links; what it parses it publishes in the
database, from where every other command reads it. So no command opens a path it read from
the database, and a link planted in a shared folder cannot make a task write, or its supervisor
read, another file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from taskwatcher.engine.errors import FeedpathMissing, FeedpathUnusable
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.safepath import untrusted_part
from taskwatcher.grammar import FeedbackReader
from taskwatcher.grammar.reader import TIME_BUDGET

log = get_logger(__name__)

#: The argv marker by which the spec recognises a program that writes feedback.
FEEDBACK_FLAG = "--feedback"
#: Seconds a read of the file may take inside the supervision loop, whose deadlines must not
#: wait on a file's size; the final read has the reader's full budget.
LOOP_READ_BUDGET = 0.2
#: Writes this close to a read may share the file's modification time with it.
_SAME_TICK = 1.0
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def feedback_name(taskid: int) -> str:
    """`feedback_<id>.log`: the only part of the path derived for a task, from an integer."""
    return f"feedback_{int(taskid)}.log"


def given_folder(folder: Path) -> Path:
    """A folder named on the command line: absolute, links resolved, existing, safe."""
    if not folder.is_dir():
        raise FeedpathMissing(f"feedback folder {folder} does not exist")
    return check_folder(folder)


def default_folder(folder: Path, kind: str = "feedback") -> Path:
    """A folder twrun keeps files in (beside the database by default), made private (0700)
    on first use, then checked."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror
        raise FeedpathUnusable(f"cannot create the {kind} folder {folder}: {reason}") from None
    return check_folder(folder, kind)


def check_folder(folder: Path, kind: str = "feedback") -> Path:
    """The folder resolved, refused when another user could redirect it (see `safepath`):
    then the task could write, and its supervisor read or remove, another file."""
    if problem := untrusted_part(folder):
        raise FeedpathUnusable(
            f"{kind} folder {folder}: {problem}; use a folder only you (or root) can change"
        )
    return Path(os.path.realpath(folder))


class FeedbackFile:
    """The supervisor's hold on one task's feedback file: its heartbeat and its values.

    Warnings from reading (an over-long line, a link or FIFO in the file's place) are
    logged once each, not on every look.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reader = _reader(path)
        self._published: dict[str, str] | None = None
        self._warned: set[str] = set()
        self._seen: os.stat_result | None = None  # the file at the last look
        self._read_as: tuple[int, int, int] | None = None  # inode, size, mtime at the last read
        self._read_at = 0.0
        self._following: tuple[int, int] | None = None  # the regular file being read
        self._interrupted = False  # something else was seen in its place since

    def create(self) -> None:
        """Remove a leftover and make the file anew: 0600, ours, never through a link.

        FeedpathUnusable when that fails (a leftover of another user in a sticky folder, or
        a file planted between the removal and the creation).
        """
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:
            raise FeedpathUnusable(
                f"cannot remove the old feedback file {self.path}: {error.strerror}"
            ) from None
        try:
            os.close(os.open(self.path, _CREATE_FLAGS, 0o600))
        except OSError as error:
            raise FeedpathUnusable(
                f"cannot create the feedback file {self.path}: {error.strerror}"
            ) from None

    def mtime(self) -> float | None:
        """The heartbeat: the file's modification time; None when no regular file is there.

        A link, FIFO or device in the file's place is no heartbeat, and is said once.
        """
        try:
            status = os.lstat(self.path)
        except OSError:
            status = None
        self._follow(status)
        self._seen = status
        if status is None:
            return None
        if stat.S_ISREG(status.st_mode):
            return status.st_mtime
        kind = "a symbolic link, not read" if stat.S_ISLNK(status.st_mode) else "not a regular file"
        self._warn_once(f"{self.path}: {kind}")
        return None

    def _follow(self, status: os.stat_result | None) -> None:
        """Start reading afresh when a regular file is back after something else was there.

        The new file may have the inode number of the one read before it (file systems
        reuse them at once), which the reader alone would take for the same file grown.
        Meanwhile (nothing, a link, a FIFO) the last values stand.
        """
        if status is None or not stat.S_ISREG(status.st_mode):
            self._interrupted = True
            return
        identity = (status.st_dev, status.st_ino)
        if self._interrupted or identity != self._following:
            if self._following is not None:
                self._reader = _reader(self.path)
            self._following, self._interrupted = identity, False

    def changes(self, now: float) -> dict[str, str] | None:
        """The values when they differ from the last ones seen, reading only when due.

        Due is when the file seen at the last look (`mtime`) differs from the one last read,
        or was read within a second of its last change: a write in the same tick of the
        file system's clock leaves the modification time as it was. `now` is the wall clock.
        """
        seen = self._seen
        if seen is None or not stat.S_ISREG(seen.st_mode):
            return None
        if seen.st_size == 0 and self._published is None:
            return None  # the file twrun made, still empty: nothing written yet
        signature = (seen.st_ino, seen.st_size, seen.st_mtime_ns)
        recent = self._read_at - seen.st_mtime < _SAME_TICK
        if signature == self._read_as and not recent:
            return None
        self._read_as, self._read_at = signature, now
        values = self._poll(final=False)
        if values == self._published:
            return None
        self._published = values
        return values

    @property
    def incomplete(self) -> str | None:
        """Why the last read stopped short of the file's end (its budget ran out, a read
        failed); None when its values stand for the whole file."""
        return self._reader.incomplete

    def final(self) -> tuple[dict[str, str] | None, str | None]:
        """The values as the file stands at the end (None for a task that wrote nothing), and
        why they may miss something, for history's termerror: a read, this one or an earlier
        one, that skipped part of the file, or this one running out of its budget; None when
        every byte was read."""
        self._reader.time_budget = TIME_BUDGET
        lost_before = list(self._reader.lost)
        values = self._poll(final=True)
        if not values and self._published is None and not self._has_content():
            return None, None
        reasons = [*lost_before, *filter(None, [self._reader.incomplete])]
        return values, "; ".join(reasons) or None

    def remove(self) -> None:
        """Tidy up after the task; failing to is worth a warning, not a failed task."""
        try:
            self.path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as error:
            log.warning("cannot remove the feedback file %s: %s", self.path, error.strerror)

    def _poll(self, *, final: bool) -> dict[str, str]:
        values = self._reader.poll(final=final)
        for warning in self._reader.warnings:
            self._warn_once(warning)
        return values

    def _warn_once(self, warning: str) -> None:
        if warning not in self._warned:
            self._warned.add(warning)
            log.warning("%s", warning)

    def _has_content(self) -> bool:
        try:
            return os.lstat(self.path).st_size > 0
        except OSError:
            return False


def _reader(path: Path) -> FeedbackReader:
    """The file's reader: never through a link, with the loop's time budget."""
    return FeedbackReader(path, follow_symlinks=False, time_budget=LOOP_READ_BUDGET)


def feedback_elsewhere(argv: Sequence[str], feedback_file: Path) -> str | None:
    """The warning for a command told (`--feedback X`) to write where twrun does not look.

    Such a task is healthy but times out. Only an X named like the watched file counts: a
    value of another name may be no path at all (`--feedback` is also a bare marker). X is
    compared by path arithmetic against the working directory only: a path from the command
    line never reaches the filesystem.
    """
    target = _feedback_argument(argv)
    if not target or Path(target).name != feedback_file.name:
        return None
    written = Path(target).absolute()
    if written == feedback_file.absolute():
        return None
    return (
        f"the command writes its feedback to {target}, but twrun watches {feedback_file}: "
        f"have it write to $TASKWATCHER_FEEDBACK, or make {written.parent} the feedback folder"
    )


def _feedback_argument(argv: Sequence[str]) -> str | None:
    """X of the first `--feedback X` or `--feedback=X`; None for a bare flag."""
    for index, arg in enumerate(argv):
        if arg.startswith(FEEDBACK_FLAG + "="):
            return arg.removeprefix(FEEDBACK_FLAG + "=")
        if arg == FEEDBACK_FLAG:
            following = argv[index + 1] if index + 1 < len(argv) else ""
            return None if following.startswith("-") else following
    return None
