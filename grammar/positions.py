"""Line numbers of positions in a text, without counting the same newlines twice."""

from __future__ import annotations


class LineNumbers:
    """Maps increasing positions of one text (str or bytes) to line numbers in linear time."""

    def __init__(self, text: str | bytes, first_line: int = 1) -> None:
        self._text = text
        self._newline = b"\n" if isinstance(text, bytes) else "\n"
        self._line = first_line
        self._counted_up_to = 0

    def at(self, position: int) -> int:
        """Line number of the character at `position`; positions must not decrease."""
        self._line += self._text.count(self._newline, self._counted_up_to, position)
        self._counted_up_to = position
        return self._line
