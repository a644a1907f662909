"""Rows to plain records ready for JSON, with the DESIGN.md keys first and extras after.

Durations and timers are computed here from stored times, so nobody rewrites rows every second.
"""

from __future__ import annotations

import math
import re
import sqlite3
from typing import Any

import orjson

from taskwatcher.engine.lifecycle import Status

#: What each column holds; an edited or damaged row may hold anything, so every value read is
#: checked against this and replaced by None (or coerced to text) when it does not fit.
_INTEGER = frozenset(
    {"id", "taskid", "pid", "pgid", "supervisor_pid", "uid", "exitcode", "is_unique", "feedback"}
)
_REAL = frozenset(
    {"reservetime", "starttime", "endtime", "lastupdate", "timeout", "duration",
     "supervisor_ctime", "child_ctime", "heartbeat", "kill_requested_at"}
)  # fmt: skip
_JSON = frozenset({"command"})


def clean_row(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """A row as plain values of the types its columns promise, whatever was written there."""
    return {key: _cleaned(key, row[key]) for key in row.keys()}  # noqa: SIM118 (sqlite3.Row)


def _cleaned(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _INTEGER:
        return _integer(value)
    if column in _REAL:
        return _real(value)
    if column in _JSON:
        return value if isinstance(value, str) else None
    return _text(value)


def _integer(value: Any) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _real(value: Any) -> float | None:
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return value if isinstance(value, str) else str(value)


def task_record(row: sqlite3.Row | dict[str, Any], now: float) -> dict[str, Any]:
    """A live task as `twctl list --json` shows it; timer is None until the task starts."""
    row = clean_row(row)
    started = row["status"] != Status.RESERVED and row["starttime"] is not None
    last_sign_of_life = row["heartbeat"] if row["heartbeat"] is not None else row["starttime"]
    return {
        "taskid": row["id"],
        "name": row["name"],
        "info1": row["info1"],
        "info2": row["info2"],
        "info3": row["info3"],
        "pid": row["pid"],
        "status": row["status"],
        "feedback": bool(row["feedback"]),
        "reservetime": row["reservetime"],
        "starttime": row["starttime"],
        "duration": now - row["starttime"] if started else None,
        "lastupdate": row["lastupdate"],
        "timer": now - last_sign_of_life if started else None,
        "timeout": row["timeout"],
        "unique": bool(row["is_unique"]),
        "host": row["host"],
        "supervisor_pid": row["supervisor_pid"],
        "supervisor_ctime": row["supervisor_ctime"],
        "pgid": row["pgid"],
        "child_ctime": row["child_ctime"],
        "heartbeat": row["heartbeat"],
        "feedpath": row["feedpath"],
        "command": decode_command(row["command"]),
        "kill_request": row["kill_request"],
        "kill_requested_at": row["kill_requested_at"],
        "uid": row["uid"],
        "token_hash": row["token_hash"],
    }


def history_record(row: sqlite3.Row) -> dict[str, Any]:
    """A finished task as `twctl history --json` shows it; feedback is null for a task without."""
    feedback = decode_feedback(row["feedback"])
    row = clean_row(row)
    return {
        "id": row["id"],
        "taskid": row["taskid"],
        "taskname": row["taskname"],
        "info1": row["info1"],
        "info2": row["info2"],
        "info3": row["info3"],
        "termsignal": row["termsignal"],
        "termerror": row["termerror"],
        "exitcode": row["exitcode"],
        "outcome": row["outcome"],
        "starttime": row["starttime"],
        "endtime": row["endtime"],
        "duration": row["duration"],
        "feedback": feedback,
        "reservetime": row["reservetime"],
        "host": row["host"],
        "pid": row["pid"],
        "timeout": row["timeout"],
        "killed_by": row["killed_by"],
        "command": decode_command(row["command"]),
    }


def decode_feedback(stored: Any) -> dict[str, str] | None:
    """A stored feedback object; None when it is missing or damaged, only text values kept."""
    try:
        values = orjson.loads(stored)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(values, dict):
        return None
    return {key: value for key, value in values.items() if isinstance(value, str)}


def encode_command(command: list[str] | tuple[str, ...] | None) -> str | None:
    """argv is stored as a JSON array so arguments with spaces survive the round trip."""
    return None if command is None else orjson.dumps([storable(arg) for arg in command]).decode()


#: Lone surrogates: how Python holds the bytes of an argument or path that are not UTF-8.
_UNDECODED = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """Text as the database and JSON keep it: valid UTF-8, every byte that was not shown as
    `\\xNN`, as `ls -b` prints it (`caf\\xe9.txt`); anything else unchanged.

    The task itself gets its argv byte for byte; only the record uses this form.
    """
    if text.isascii():
        return text
    return _UNDECODED.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def decode_command(stored: str | None) -> list[str] | None:
    """A stored argv; None when missing or damaged."""
    try:
        command = orjson.loads(stored) if stored is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
        return None
    return command
