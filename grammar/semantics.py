"""What the statements do to the values: the one model the fast path and the Lark path share.

Values are kept in a dict where a cleared keyword stays as a CLEARED placeholder until the next
`[]`. The placeholder keeps the keyword's place, so the order of the visible keys (first
appearance since the last `[]`) does not depend on how the file was cut into reads.
"""

from __future__ import annotations

CLEARED = ""


def visible(values: dict[str, str]) -> dict[str, str]:
    """The values a user sees: every keyword that currently holds a value."""
    return {keyword: value for keyword, value in values.items() if value != CLEARED}
