"""Feedback bytes arriving in pieces, turned into values one complete line at a time.

Memory stays bounded whatever the input: a piece is consumed as soon as it arrives, only the
unterminated last line is kept, a line longer than MAX_LINE_BYTES is skipped and reported
instead of being buffered, and the values are capped (semantics.MAX_KEYS, MAX_HELD_BYTES)
after every run of lines applied. Bytes that are not UTF-8 make their line invalid; such
lines, and invalid lines holding a NUL byte, are counted as not text.
"""

from __future__ import annotations

import re

from .datatype import datatype, field, replace
from .diagnostics import Diagnostic
from .fastpath import apply_framed, frame, matchers
from .parser import check_framed
from .positions import LineNumbers
from .semantics import CAPPED, MAX_HELD_BYTES, MAX_KEYS, cap, visible

MAX_LINE_BYTES = 64 * 1024
# Any line longer than MAX_LINE_BYTES covers at least one whole window of this size.
_WINDOW = MAX_LINE_BYTES // 2
TOO_LONG = f"line longer than {MAX_LINE_BYTES} bytes: skipped"
# What "surrogateescape" decoding turns undecodable bytes into.
_UNDECODED = re.compile("[\ud800-\udfff]")


@datatype
class FeedbackStream:
    """The state between two pieces: values (with cleared placeholders), the rank of each
    keyword's last statement (`recency`), the partial last line, whether an over-long line is
    being skipped, how many complete lines were consumed, whether keys were ever dropped
    to keep within the caps (`capped`), and how many lines were skipped for not being text
    (`not_text`: bytes that are not UTF-8, or a NUL byte in a line the grammar rejects; a NUL
    inside a valid line's value is that value's own), so a reader can tell a binary file
    from a text file with a few bad lines.

    With `check`, every invalid line is also explained in `diagnostics` (validation mode);
    otherwise over-long lines are reported there, and once per stream that keys were
    dropped. The owner drains `diagnostics`. Values given to the constructor are capped too;
    keywords they hold without a recency (a state saved before it was kept) rank as older
    than any other, in their order.
    """

    values: dict[str, str] = field(default_factory=dict)
    recency: dict[str, int] = field(default_factory=dict)
    pending: bytes = b""
    skipping: bool = False
    lines: int = 0
    check: bool = False
    capped: bool = False
    not_text: int = 0
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # What the values may hold at most, in bytes: the exact size is counted only past the cap.
    _held_at_most: int = field(init=False, repr=False, default=MAX_HELD_BYTES + 1)

    def __post_init__(self) -> None:
        # Keywords without a recency rank below every other (negative), in their order.
        oldest = -len(self.values)
        self.recency = {
            keyword: self.recency.get(keyword, oldest + place)
            for place, keyword in enumerate(self.values)
        }
        self._keep_within_caps(0)

    def feed(self, data: bytes) -> None:
        """Consume the complete lines that `data` finishes; keep the unterminated rest."""
        if self.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self.skipping = False
            self.lines += 1
            data = data[newline + 1 :]
        cut = data.rfind(b"\n") + 1
        if cut:
            block = self.pending + data[:cut]
            self.pending = b""
            self._consume(block)
        self._hold(data[cut:])

    def skip_line(self) -> None:
        """Bytes were skipped before the next piece: drop the partial line, and skip the rest
        of the line that piece starts in (up to its first newline)."""
        self.pending = b""
        self.skipping = True

    def finish(self) -> None:
        """The input is complete: its last line counts even without a newline."""
        if self.pending:
            block = self.pending
            self.pending = b""
            self._consume(block + b"\n")

    def current(self, *, final: bool = False) -> dict[str, str]:
        """The visible values; with `final`, as if the input ended now (the state is kept)."""
        if not final or not self.pending:
            return visible(self.values)
        finished = replace(
            self, values=dict(self.values), recency=dict(self.recency), diagnostics=[]
        )
        finished.finish()
        if finished.capped:
            self._note_capped()
        return visible(finished.values)

    def _hold(self, partial: bytes) -> None:
        if len(self.pending) + len(partial) > MAX_LINE_BYTES:
            self._report(self.lines + 1, MAX_LINE_BYTES + 1, TOO_LONG)
            self.pending = b""
            self.skipping = True
        else:
            self.pending += partial

    def _consume(self, block: bytes) -> None:
        """Apply a run of complete lines (`block` ends with a newline)."""
        already_reported = len(self.diagnostics)
        text = self._decode(self._drop_long_lines(block))
        framed = frame(text)
        if "\x00" in framed:
            self._count_rejected_with_nul(framed)
        if self.check:
            self.diagnostics.extend(check_framed(framed, first_line=self.lines + 1))
            self.diagnostics[already_reported:] = sorted(
                self.diagnostics[already_reported:], key=lambda found: (found.line, found.column)
            )
        apply_framed(self.values, self.recency, framed, serial=self.lines)
        self.lines += block.count(b"\n")
        self._keep_within_caps(len(block))

    def _keep_within_caps(self, added_bytes: int) -> None:
        """Cap the values, counting what they hold only once a cheap upper bound (what they
        held, plus every byte applied since) passes MAX_HELD_BYTES: near zero cost below it."""
        self._held_at_most += added_bytes
        if len(self.values) <= MAX_KEYS and self._held_at_most <= MAX_HELD_BYTES:
            return
        keys = len(self.values)
        self._held_at_most = cap(self.values, self.recency)
        if len(self.values) < keys:
            self._note_capped()

    def _note_capped(self) -> None:
        """Say once that keys were dropped; a validation (`check`) reports only invalid lines."""
        if not self.capped:
            self.capped = True
            if not self.check:
                self._report(None, None, CAPPED)

    def _drop_long_lines(self, block: bytes) -> bytes:
        """Empty every line longer than MAX_LINE_BYTES, keeping its newline and the numbering."""
        if len(block) <= MAX_LINE_BYTES:
            return block
        numbers = LineNumbers(block, self.lines + 1)
        kept = []
        kept_from = 0
        window = 0
        while window < len(block):
            if block.find(b"\n", window, window + _WINDOW) >= 0:
                window += _WINDOW
                continue
            start = block.rfind(b"\n", 0, window) + 1
            end = block.find(b"\n", window)
            if end - start > MAX_LINE_BYTES:
                self._report(numbers.at(start), MAX_LINE_BYTES + 1, TOO_LONG)
                kept.append(block[kept_from:start])
                kept_from = end
            window = (end // _WINDOW + 1) * _WINDOW
        kept.append(block[kept_from:])
        return b"".join(kept)

    def _count_rejected_with_nul(self, framed: str) -> None:
        """Count into `not_text` each line holding a NUL byte that the grammar rejects."""
        invalid = matchers().invalid
        nul = framed.find("\x00")
        while nul >= 0:
            start = framed.rfind("\n", 0, nul)  # every framed line starts after an LF
            if invalid.match(framed, start):
                self.not_text += 1
            end = framed.find("\n", nul)
            nul = framed.find("\x00", end) if end >= 0 else -1

    def _decode(self, block: bytes) -> str:
        """Decode UTF-8; a line holding bytes that are not UTF-8 is emptied (and explained)."""
        try:
            return block.decode()
        except UnicodeDecodeError:
            text = block.decode(errors="surrogateescape")
        numbers = LineNumbers(text, self.lines + 1)
        kept = []
        kept_from = 0
        while bad := _UNDECODED.search(text, kept_from):
            start = text.rfind("\n", 0, bad.start()) + 1
            if self.check:
                byte = ord(bad.group()) - 0xDC00
                message = f"invalid UTF-8: byte 0x{byte:02x} does not decode"
                self._report(numbers.at(start), bad.start() - start + 1, message)
            kept.append(text[kept_from:start])
            kept_from = text.find("\n", bad.start())
            self.not_text += 1
        kept.append(text[kept_from:])
        return "".join(kept)

    def _report(self, line: int | None, column: int | None, message: str) -> None:
        self.diagnostics.append(Diagnostic(line, column, message))
