"""Diagnostics: where a feedback line is wrong and why, in words built from Lark's error."""

from __future__ import annotations

from .datatype import datatype

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lark.exceptions import UnexpectedToken

# How each terminal the parser may expect reads in a message, in the order messages list them.
EXPECTED_WORDS = {
    "LSQB": "'['",
    "COMMENT": "'#'",
    "KEYWORD": "a keyword",
    "RSQB": "']'",
    "VALUE": "a value",
    "_CR": "end of line",
    "_LF": "end of line",
    "$END": "end of line",
}

FOUND_WORDS = {" ": "a space", "\t": "a tab", "\r": "a carriage return"}


@datatype(frozen=True)
class Diagnostic:
    """One problem in a feedback file; line and column count from 1, columns in characters.

    A diagnostic about the whole file, not one line, has neither (None).
    """

    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        """`line:column: message`, or ` message` for the whole file: either way, what follows
        `path:` in `f"{path}:{diagnostic}"`."""
        if self.line is None:
            return f" {self.message}"
        return f"{self.line}:{self.column}: {self.message}"


def diagnostic_from_lark(error: UnexpectedToken, line_text: str, line_number: int) -> Diagnostic:
    """Explain a line Lark rejected: what was found where, what the grammar expected there."""
    at_end = error.token.type == "$END"
    offset = len(line_text) if at_end else error.column - 1
    found = "end of line" if at_end else _describe_character(line_text[offset])
    expected = _describe_expected(error.expected)
    message = f"found {found}, expected {expected}"
    if hint := _hint(line_text, offset, error.expected):
        message = f"{hint}: {message}"
    return Diagnostic(line_number, offset + 1, message)


def _describe_character(character: str) -> str:
    if character in FOUND_WORDS:
        return FOUND_WORDS[character]
    return f"'{character}'" if character.isprintable() else repr(character)


def _describe_expected(terminal_names: set[str]) -> str:
    in_order = (word for name, word in EXPECTED_WORDS.items() if name in terminal_names)
    words = list(dict.fromkeys(in_order))
    return " or ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} or {words[-1]}"


def _hint(line_text: str, offset: int, expected: set[str]) -> str | None:
    """The rule of the language that a common mistake breaks, when it is clear which one."""
    if offset == len(line_text):
        return None
    character = line_text[offset]
    if "KEYWORD" in expected or expected == {"RSQB"}:
        if character in "0123456789" and "KEYWORD" in expected:
            return "keyword must not start with a digit"
        if character in " \t":
            return "keyword must not contain spaces"
        return "keyword may only hold ASCII letters, digits, '_' and '-'"
    before = line_text[:offset].lstrip(" \t")
    if before == "[]":
        return "'[]' takes no value"
    if before.endswith("\r"):
        return "a carriage return may only end a line"
    if "LSQB" in expected:
        return "a line must start with '[' or '#'"
    return None
