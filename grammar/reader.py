"""Following a live feedback file: only the appended bytes are read, the state can be saved.

A task appends to its feedback file while supervisors and `twctl` poll it, possibly from
separate processes: `ReaderState` carries everything needed to resume where the previous
reader stopped, so each poll costs what the file gained, not what it holds. And never more
than a budget: a file that gained a terabyte (`truncate -s 1T`) costs one poll 16 MiB.
"""

from __future__ import annotations

import binascii
import os
import time
from collections.abc import Callable

from . import jsoncodec
from .datatype import datatype, field
from .diagnostics import Diagnostic
from .errors import InvalidReaderState
from .files import READ_CHUNK, OpenedFile, open_regular
from .stream import MAX_LINE_BYTES, FeedbackStream

STATE_FORMAT = 1
MAX_WARNINGS = 100
BYTE_BUDGET = 16 * 1024 * 1024  # read by one poll at the most
TIME_BUDGET = 1.0  # seconds: a poll stops at the first chunk boundary past it


@datatype(frozen=True)
class ReaderState:
    """Where a reader stopped: which file (device, inode), how far, the partial last line,
    whether it was skipping an over-long line, the lines consumed, the current values
    (cleared keywords included as placeholders, so that the key order survives a restore),
    the file's modification time then (None in states saved before it was kept) and the rank
    of each keyword's last statement, which decides what goes first past the caps (empty in
    states saved before it was kept: the values' order stands for it), and whether `lines`
    still numbers the file's lines (not after a skip).
    """

    device: int | None = None
    inode: int | None = None
    offset: int = 0
    pending: bytes = b""
    skipping: bool = False
    lines: int = 0
    values: dict[str, str] = field(default_factory=dict)
    mtime_ns: int | None = None
    recency: dict[str, int] = field(default_factory=dict)
    lines_known: bool = True

    def to_json(self) -> bytes:
        """Serialise for storage between processes (the pending bytes as base64, by binascii:
        the base64 module is a module more to import for the same two calls)."""
        fields = {
            "format": STATE_FORMAT,
            "device": self.device,
            "inode": self.inode,
            "offset": self.offset,
            "pending": binascii.b2a_base64(self.pending, newline=False).decode("ascii"),
            "skipping": self.skipping,
            "lines": self.lines,
            "values": self.values,
            "mtime_ns": self.mtime_ns,
            "recency": self.recency,
            "lines_known": self.lines_known,
        }
        return jsoncodec.dumps(fields)

    @classmethod
    def from_json(cls, data: bytes) -> ReaderState:
        """Restore a state saved by to_json; anything else raises InvalidReaderState."""
        try:
            fields = jsoncodec.loads(data)
            if fields.pop("format") != STATE_FORMAT:
                raise ValueError("unknown format")
            fields["pending"] = binascii.a2b_base64(fields["pending"], strict_mode=True)
            state = cls(**fields)
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as error:
            raise InvalidReaderState(f"unusable feedback reader state: {error}") from error
        if not state._well_typed():
            raise InvalidReaderState("unusable feedback reader state: wrong field types")
        return state

    def _well_typed(self) -> bool:
        identity = (self.device, self.inode)
        return (
            (all(isinstance(part, int) for part in identity) or identity == (None, None))
            and isinstance(self.offset, int)
            and self.offset >= 0
            and len(self.pending) <= MAX_LINE_BYTES
            and isinstance(self.skipping, bool)
            and isinstance(self.lines, int)
            and isinstance(self.values, dict)
            and isinstance(self.mtime_ns, int | None)
            and all(isinstance(item, str) for pair in self.values.items() for item in pair)
            and isinstance(self.recency, dict)
            and all(isinstance(rank, int) for rank in self.recency.values())
            and isinstance(self.lines_known, bool)
        )


class FeedbackReader:
    """Polls a feedback file incrementally. A missing file reads as `{}`; a file that shrank
    or was replaced (other inode) is read again from the start; a FIFO, device or directory
    in its place is never read: it gives a warning and the last values.

    Every poll is bounded, whatever the file: it reads at most `byte_budget` bytes, and stops
    at the first chunk boundary after `time_budget` seconds of `clock`, keeping its offset for
    the next poll. A reader further behind than the byte budget skips to the file's last
    `byte_budget` bytes, resuming after the first newline there (the last value of a key
    wins, so the end matters most): values read before are kept, keys set only in the
    skipped part are lost, and line numbers are no longer known.

    After each poll, `incomplete` is None when its values stand for the whole file, else why
    not: the poll skipped (`skipped 1.0 TiB (more than 16 MiB behind); keys set only there
    are lost`), ran out of time (`read for more than 1 s; 3.2 MiB left for the next poll`),
    or could not read the file (`not a regular file`, `Permission denied`...); several
    reasons are joined by "; ". Each reason is a warning too.

    `warnings` holds, after each poll, what that poll had to skip (over-long lines, a
    non-regular or unreadable file, dropped keys, and the reasons above), as
    "path:line:column: message" or "path: message".
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        state: ReaderState | None = None,
        *,
        chunk_size: int = READ_CHUNK,
        byte_budget: int = BYTE_BUDGET,
        time_budget: float = TIME_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        follow_symlinks: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.chunk_size = chunk_size
        self.byte_budget = byte_budget
        self.time_budget = time_budget
        self.clock = clock
        self.follow_symlinks = follow_symlinks
        self.warnings: list[str] = []
        self.incomplete: str | None = None
        self.lost: list[str] = []  # what any poll so far skipped for good, in order
        self._hidden_warnings = 0
        self._restore(state or ReaderState())

    @property
    def state(self) -> ReaderState:
        """A snapshot to resume from later, in this process or another one."""
        device, inode = self._identity or (None, None)
        return ReaderState(
            device=device,
            inode=inode,
            offset=self._offset,
            pending=self._stream.pending,
            skipping=self._stream.skipping,
            lines=self._stream.lines,
            values=dict(self._stream.values),
            mtime_ns=self._mtime_ns,
            recency=dict(self._stream.recency),
            lines_known=self._lines_known,
        )

    def poll(self, *, final: bool = False) -> dict[str, str]:
        """The current values, after reading what was appended since the previous poll.

        An unterminated last line waits for its newline, unless `final` says the writer is
        done, in which case it counts (without being consumed, should the file grow again),
        provided the poll reached the end of the file: not when it ran out of time or a read
        failed (`incomplete` then says so), as its partial line is then no last line.
        """
        self.warnings = []
        self.incomplete = None
        self._hidden_warnings = 0
        stopped_short = self._read(deadline=self.clock() + self.time_budget)
        values = self._stream.current(final=final and not stopped_short)
        self._take_stream_diagnostics()
        if self._hidden_warnings:
            self.warnings.append(f"{self.path}: {self._hidden_warnings} more warnings")
        return values

    def _read(self, deadline: float) -> bool:
        """Read what the file gained, within the budgets; True if stopped short of its end."""
        try:
            opened = open_regular(self.path, follow_symlinks=self.follow_symlinks)
        except FileNotFoundError:
            self._restore(ReaderState())
            return False
        except OSError as error:
            self._incomplete_because(error.strerror or str(error))
            return False
        try:
            with opened:
                return self._read_appended(opened, deadline)
        except OSError as error:
            self._incomplete_because(error.strerror or str(error))
            return True

    def _read_appended(self, opened: OpenedFile, deadline: float) -> bool:
        if not self._continues(opened):
            device, inode = opened.identity
            self._restore(ReaderState(device=device, inode=inode))
        if opened.size - self._offset > self.byte_budget:
            self._skip_to(opened.size - self.byte_budget)
        self._mtime_ns = opened.mtime_ns
        for chunk in opened.read(self._offset, opened.size, self.chunk_size):
            self._offset += len(chunk)
            self._stream.feed(chunk)
            self._take_stream_diagnostics()
            if self._offset < opened.size and self.clock() >= deadline:
                left = _size(opened.size - self._offset)
                self._incomplete_because(
                    f"read for more than {self.time_budget:g} s; {left} left for the next poll"
                )
                return True
        return False

    def _skip_to(self, offset: int) -> None:
        """Jump ahead: the stream resumes after the first newline from `offset` on."""
        skipped, budget = _size(offset - self._offset), _size(self.byte_budget)
        self._offset = offset
        self._stream.skip_line()
        self._lines_known = False
        reason = f"skipped {skipped} (more than {budget} behind); keys set only there are lost"
        self.lost.append(reason)
        self._incomplete_because(reason)

    def _incomplete_because(self, reason: str) -> None:
        self._warn(f"{self.path}: {reason}")
        self.incomplete = reason if self.incomplete is None else f"{self.incomplete}; {reason}"

    def _restore(self, state: ReaderState) -> None:
        self._identity = None if state.device is None else (state.device, state.inode)
        self._offset = state.offset
        self._mtime_ns = state.mtime_ns
        self._lines_known = state.lines_known
        self._stream = FeedbackStream(
            values=dict(state.values),
            recency=dict(state.recency),
            pending=state.pending,
            skipping=state.skipping,
            lines=state.lines,
        )

    def _continues(self, opened: OpenedFile) -> bool:
        """Is this still the file read last time, grown or not? Catches rewrites in place too:
        the bytes just before the offset must still be the newline and the partial line, and
        a file that changed without growing (`echo "[progress]50" > file` after 40) cannot
        have been appended to. Bytes rewritten in place before a growth go unnoticed."""
        if opened.identity != self._identity or opened.size < self._offset:
            return False
        rewritten = self._mtime_ns is not None and opened.mtime_ns != self._mtime_ns
        if opened.size == self._offset and rewritten:
            return False
        if self._offset == 0 or self._stream.skipping:
            return True
        pending = self._stream.pending
        start = self._offset - len(pending) - 1
        expected = pending if start < 0 else b"\n" + pending
        return b"".join(opened.read(max(start, 0), self._offset)) == expected

    def _take_stream_diagnostics(self) -> None:
        for diagnostic in self._stream.diagnostics:
            located = (
                diagnostic if self._lines_known else Diagnostic(None, None, diagnostic.message)
            )
            self._warn(f"{self.path}:{located}")
        self._stream.diagnostics.clear()

    def _warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self._hidden_warnings += 1


def _size(count: int) -> str:
    """A byte count as people read it: 100 bytes, 16 MiB, 3.2 MiB, 1.0 TiB."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1000 or unit == "PiB":
            break
    return f"{value:.0f} {unit}" if value.is_integer() else f"{value:.1f} {unit}"
