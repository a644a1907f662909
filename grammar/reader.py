"""Following a live feedback file: only the appended bytes are read, the state can be saved.

A task appends to its feedback file while supervisors and `twctl` poll it, possibly from
separate processes: `ReaderState` carries everything needed to resume where the previous
reader stopped, so each poll costs what the file gained, not what it holds.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field

import orjson

from .errors import InvalidReaderState
from .files import READ_CHUNK, OpenedFile, open_regular
from .stream import MAX_LINE_BYTES, FeedbackStream

STATE_FORMAT = 1
MAX_WARNINGS = 100


@dataclass(frozen=True)
class ReaderState:
    """Where a reader stopped: which file (device, inode), how far, the partial last line,
    whether it was skipping an over-long line, the lines consumed, the current values
    (cleared keywords included as placeholders, so that the key order survives a restore),
    the file's modification time then (None in states saved before it was kept) and the rank
    of each keyword's last statement, which decides what goes first past the caps (empty in
    states saved before it was kept: the values' order stands for it).
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

    def to_json(self) -> bytes:
        """Serialise for storage between processes (the pending bytes as base64)."""
        fields = {
            "format": STATE_FORMAT,
            "device": self.device,
            "inode": self.inode,
            "offset": self.offset,
            "pending": base64.b64encode(self.pending).decode("ascii"),
            "skipping": self.skipping,
            "lines": self.lines,
            "values": self.values,
            "mtime_ns": self.mtime_ns,
            "recency": self.recency,
        }
        return orjson.dumps(fields)

    @classmethod
    def from_json(cls, data: bytes) -> ReaderState:
        """Restore a state saved by to_json; anything else raises InvalidReaderState."""
        try:
            fields = orjson.loads(data)
            if fields.pop("format") != STATE_FORMAT:
                raise ValueError("unknown format")
            fields["pending"] = base64.b64decode(fields["pending"], validate=True)
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
        )


class FeedbackReader:
    """Polls a feedback file incrementally. A missing file reads as `{}`; a file that shrank
    or was replaced (other inode) is read again from the start; a FIFO, device or directory
    in its place is never read: it gives a warning and the last values.

    `warnings` holds, after each poll, what that poll had to skip (over-long lines, a
    non-regular or unreadable file), as "path:line:column: message" or "path: message".
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        state: ReaderState | None = None,
        *,
        chunk_size: int = READ_CHUNK,
    ) -> None:
        self.path = os.fspath(path)
        self.chunk_size = chunk_size
        self.warnings: list[str] = []
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
        )

    def poll(self, *, final: bool = False) -> dict[str, str]:
        """The current values, after reading what was appended since the previous poll.

        An unterminated last line waits for its newline, unless `final` says the writer is
        done, in which case it counts (without being consumed, should the file grow again).
        """
        self.warnings = []
        self._hidden_warnings = 0
        self._read()
        values = self._stream.current(final=final)
        self._take_stream_diagnostics()
        if self._hidden_warnings:
            self.warnings.append(f"{self.path}: {self._hidden_warnings} more warnings")
        return values

    def _read(self) -> None:
        try:
            opened = open_regular(self.path)
        except FileNotFoundError:
            self._restore(ReaderState())
            return
        except OSError as error:
            self._warn(f"{self.path}: {error.strerror or error}")
            return
        try:
            with opened:
                self._read_appended(opened)
        except OSError as error:
            self._warn(f"{self.path}: {error.strerror or error}")

    def _read_appended(self, opened: OpenedFile) -> None:
        if not self._continues(opened):
            device, inode = opened.identity
            self._restore(ReaderState(device=device, inode=inode))
        for chunk in opened.read(self._offset, opened.size, self.chunk_size):
            self._offset += len(chunk)
            self._stream.feed(chunk)
            self._take_stream_diagnostics()
        self._mtime_ns = opened.mtime_ns

    def _restore(self, state: ReaderState) -> None:
        self._identity = None if state.device is None else (state.device, state.inode)
        self._offset = state.offset
        self._mtime_ns = state.mtime_ns
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
            self._warn(f"{self.path}:{diagnostic}")
        self._stream.diagnostics.clear()

    def _warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)
        else:
            self._hidden_warnings += 1
