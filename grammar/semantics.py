"""What the statements do to the values: the one model the fast path and the Lark path share.

Values are kept in a dict where a cleared keyword stays as a CLEARED placeholder until the next
`[]`. The placeholder keeps the keyword's place, so the order of the visible keys (first
appearance since the last `[]`) does not depend on how the file was cut into reads.

Beside the values, a *recency* dict numbers every keyword by its last statement (a larger
number is a later statement). A feedback holds at most MAX_KEYS keywords and MAX_HELD_BYTES of
keywords and values together: past either, the least recently set keywords are dropped, so a
task writing millions of distinct keys cannot make its readers hold them all. A dropped
keyword is forgotten: set again later, it takes its place at the end, so past the caps what a
stream keeps may depend on where its reads were cut.
"""

from __future__ import annotations

CLEARED = ""
MAX_KEYS = 10_000
MAX_HELD_BYTES = 1024 * 1024  # UTF-8 bytes of keywords and values; a placeholder counts its keyword
CAPPED = (
    f"feedback holds more than {MAX_KEYS} keys or {MAX_HELD_BYTES // 1024**2} MiB;"
    " the least recently set keys were dropped"
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    Value = TypeVar("Value")


def visible(values: dict[str, str]) -> dict[str, str]:
    """The values a user sees: every keyword that currently holds a value."""
    return {keyword: value for keyword, value in values.items() if value != CLEARED}


def cap(values: dict[str, str], recency: dict[str, int]) -> int:
    """Drop the least recently set keywords until the caps hold; returns the bytes then held.

    What stays is the longest run of most recently set keywords that fits, in its order of
    first appearance. Both dicts are changed in place and keep the same keys.
    """
    if len(values) <= MAX_KEYS and (held := _held_bytes(values)) <= MAX_HELD_BYTES:
        return held
    kept: set[str] = set()
    held = 0
    for keyword in sorted(values, key=recency.__getitem__, reverse=True)[:MAX_KEYS]:
        size = _utf8_length(keyword) + _utf8_length(values[keyword])
        if held + size > MAX_HELD_BYTES:
            break
        kept.add(keyword)
        held += size
    _keep_only(values, kept)
    _keep_only(recency, kept)
    return held


def _held_bytes(values: dict[str, str]) -> int:
    return _utf8_length("".join(values)) + _utf8_length("".join(values.values()))


def _keep_only(mapping: dict[str, Value], kept: set[str]) -> None:
    """Rebuild in place rather than delete one by one: a dict never shrinks on deletion."""
    remaining = {key: value for key, value in mapping.items() if key in kept}
    mapping.clear()
    mapping.update(remaining)


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
