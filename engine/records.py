"""Rows to plain records ready for JSON, with the DESIGN.md keys first and extras after.

Durations and timers are computed here from stored times, so nobody rewrites rows every second.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import orjson

from taskwatcher.engine.machine import Status


def task_record(row: sqlite3.Row, now: float) -> dict[str, Any]:
    """A live task as `twctl list --json` shows it; timer is None until the task starts."""
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
        "feedback": orjson.loads(row["feedback"]),
        "reservetime": row["reservetime"],
        "host": row["host"],
        "pid": row["pid"],
        "timeout": row["timeout"],
        "killed_by": row["killed_by"],
        "command": decode_command(row["command"]),
    }


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
    return None if stored is None else orjson.loads(stored)
