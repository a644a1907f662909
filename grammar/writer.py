"""Writing a feedback file from a Python task program, one flushed line per call.

Every call moves the file's mtime, which is the heartbeat the supervisor watches. Keywords,
values and comments are checked against the grammar's own terminals before anything is
written, so a task cannot produce a line its supervisor would skip.
"""

from __future__ import annotations

import os

from .errors import InvalidKeyword, InvalidValue
from .fastpath import matchers

HEARTBEAT_KEYWORD = "heartbeat"


class FeedbackWriter:
    """Appends statements to a feedback file (created if missing); a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "a", encoding="utf-8", newline="\n")  # noqa: SIM115

    def set(self, keyword: str, value: str | int | float) -> None:
        """Give `keyword` a value; numbers are written with str()."""
        text = str(value)
        _check_keyword(keyword)
        if not matchers().value.fullmatch(text):
            raise InvalidValue(
                f"value of {keyword!r} must be non-empty and hold no line break"
                f" (use clear({keyword!r}) to remove the keyword): {text!r}"
            )
        self._write(f"[{keyword}]{text}")

    def clear(self, keyword: str) -> None:
        """Remove `keyword` from the feedback."""
        _check_keyword(keyword)
        self._write(f"[{keyword}]")

    def clear_all(self) -> None:
        """Remove every keyword written so far, e.g. before a final report."""
        self._write("[]")

    def heartbeat(self) -> None:
        """Prove the task is alive without changing any value the user cares about."""
        self.clear(HEARTBEAT_KEYWORD)

    def comment(self, text: str) -> None:
        """A line readers ignore: debugging notes for whoever opens the file."""
        line = f"# {text}"
        if not matchers().comment.fullmatch(line):
            raise InvalidValue(f"a comment must hold no line break: {text!r}")
        self._write(line)

    def close(self) -> None:
        """Close the file; the lines are already on disk."""
        self._file.close()

    def __enter__(self) -> FeedbackWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()


def _check_keyword(keyword: str) -> None:
    if not matchers().keyword.fullmatch(keyword):
        raise InvalidKeyword(
            f"invalid feedback keyword {keyword!r}: use ASCII letters, digits, '_' and '-',"
            " not starting with a digit"
        )
