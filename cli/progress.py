"""What a task's feedback says of its progress, read the same by `watch` and `metrics`."""

from __future__ import annotations


def progress_of(feedback: dict[str, str]) -> float | None:
    """The numeric `progress` key clamped to 0-100, or None when absent or not a number."""
    try:
        value = float(feedback["progress"])
    except (KeyError, ValueError):
        return None
    return min(max(value, 0.0), 100.0) if value == value else None
