"""The records the store takes and returns, typed, and the one place they become JSON.

`Task` is a live task, `Ended` a finished one, `Launch` what a supervisor records when it
claims a reservation, `Ending` how a task ended. Durations and timers are computed when read,
so nobody rewrites rows every second. A record is built from stored values through `typed`:
an edited or damaged row may hold anything, and what does not fit a field's type becomes
None (or text), so no reader ever fails on it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence

from taskwatcher.engine.lifecycle import STARTED_STATUSES, Status
from taskwatcher.grammar import jsoncodec
from taskwatcher.grammar.datatype import MISSING, datatype, field, fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@datatype(frozen=True)
class Launch:
    """What a supervisor records when it claims a reservation, before it launches anything."""

    supervisor_pid: int
    supervisor_ctime: float
    host: str
    token_hash: str
    uid: int
    command: Sequence[str] = ()
    name: str | None = None
    info1: str | None = None
    info2: str | None = None
    info3: str | None = None
    timeout: float | None = None
    feedpath: str | None = None
    logfile: str | None = None  # None: the output is not captured
    attempts: int = 1  # how many times the task may be launched: 1 + its retries


@datatype(frozen=True)
class Ending:
    """How a task ended, as history keeps it; without feedback the last published one counts."""

    outcome: Status
    termsignal: str | None = None
    termerror: str | None = None
    exitcode: int | None = None
    endtime: float | None = None  # when the task ended; None: when it is archived
    feedback: dict[str, str] | None = None
    output_tail: str | None = None  # the last lines of the captured output


@datatype(frozen=True)
class Task:
    """A live task: reserved, or started and watched by its supervisor."""

    taskid: int
    status: str
    name: str | None = None
    info1: str | None = None
    info2: str | None = None
    info3: str | None = None
    pid: int | None = None
    feedback: bool = False  # whether it has written feedback
    reservetime: float | None = None
    starttime: float | None = None
    lastupdate: float | None = None
    timeout: float | None = None
    unique: bool = False
    host: str | None = None
    supervisor_pid: int | None = None
    supervisor_ctime: float | None = None
    pgid: int | None = None
    child_ctime: float | None = None
    heartbeat: float | None = None
    feedpath: str | None = None
    command: list[str] | None = None
    kill_request: str | None = None
    kill_requested_at: float | None = None
    uid: int | None = None
    token_hash: str | None = None
    logfile: str | None = None
    ready: float | None = None  # when the task said it was ready (sd_notify READY=1)
    stopping: float | None = None  # when it said it was stopping (STOPPING=1)
    lease_until: float | None = None  # server time the supervisor's lease runs out (many hosts)
    output_tail: str | None = None  # the output's last lines, pushed for other hosts
    attempt: int = 1  # the attempt running, or while RETRYING the one to come
    attempts: int = 1  # out of how many
    retry_at: float | None = None  # while RETRYING: when the next attempt is launched

    @property
    def started(self) -> bool:
        """Whether an attempt of the task is running (not reserved, nor between attempts)."""
        return self.status in STARTED_STATUSES and self.starttime is not None

    def heartbeat_age(self, now: float) -> float | None:
        """Seconds since the last heartbeat (since the start before any); None until started."""
        if not self.started:
            return None
        return now - (self.heartbeat if self.heartbeat is not None else self.starttime)

    def as_json(self, now: float) -> dict[str, Any]:
        """As `twctl list --json` shows it: DESIGN.md's keys first, computed times as of now."""
        values = dict(vars(self))  # not asdict(), which deep-copies every field: see Ended
        values.update(
            duration=now - self.starttime if self.started else None,
            timer=self.heartbeat_age(now),
        )
        return {key: values[key] for key in TASK_JSON_KEYS}


@datatype(frozen=True)
class Ended:
    """A finished task as history keeps it; `feedback` is None for a task that wrote none."""

    id: int
    taskid: int
    outcome: str
    endtime: float | None = None
    taskname: str | None = None
    info1: str | None = None
    info2: str | None = None
    info3: str | None = None
    termsignal: str | None = None
    termerror: str | None = None
    exitcode: int | None = None
    starttime: float | None = None
    duration: float | None = None
    feedback: dict[str, str] | None = None
    reservetime: float | None = None
    host: str | None = None
    pid: int | None = None
    timeout: float | None = None
    killed_by: str | None = None
    command: list[str] | None = field(default=None)
    logfile: str | None = None
    output_tail: str | None = None
    token_hash: str | None = None  # what proves its leftover processes its own
    uid: int | None = None
    attempt: int = 1  # which attempt of the task this row is (retries: 2, 3, ...)

    def as_json(self) -> dict[str, Any]:
        """As `twctl history --json` shows it: DESIGN.md's keys first, then the extras.

        The fields are read as they are: a deep copy of each (as dataclasses.asdict makes)
        had streaming a long history spend most of its time copying (20 s for 100,000 rows).
        """
        return {key: getattr(self, key) for key in ENDED_JSON_KEYS}


@datatype(frozen=True)
class Tally:
    """History summed up for one task name and outcome, as monitoring reads it."""

    taskname: str  # "" for tasks without a name
    outcome: str
    count: int  # how many ended within the window asked for
    last_end: float  # when the latest of them ended, whatever the window


#: `list --json`: the keys DESIGN.md promises, in its order, then the extras.
TASK_JSON_KEYS = (
    "taskid", "name", "info1", "info2", "info3", "pid", "status", "feedback", "reservetime",
    "starttime", "duration", "lastupdate", "timer", "timeout", "unique", "host",
    "supervisor_pid", "supervisor_ctime", "pgid", "child_ctime", "heartbeat", "feedpath",
    "command", "kill_request", "kill_requested_at", "uid", "token_hash", "logfile",
    "ready", "stopping", "attempt", "attempts", "retry_at",
)  # fmt: skip
#: `history --json`: likewise.
ENDED_JSON_KEYS = (
    "id", "taskid", "taskname", "info1", "info2", "info3", "termsignal", "termerror",
    "exitcode", "outcome", "starttime", "endtime", "duration", "feedback", "reservetime",
    "host", "pid", "timeout", "killed_by", "command", "logfile", "output_tail", "attempt",
)  # fmt: skip


def typed(record: type[Task] | type[Ended], values: Mapping[str, Any]) -> Any:
    """A record from stored values, each made to fit its field's type, or else its default
    (None for most: a damaged `attempt` reads as the field's 1)."""
    fitters = _fitters(record)
    kept = {
        name: None if value is None else fitters[name](value)
        for name, value in values.items()
        if name in fitters
    }
    for name, default in _defaults(record).items():
        if name in kept and kept[name] is None:
            kept[name] = default
    for name in ("taskid", "id"):
        if name in fitters and kept.get(name) is None:
            kept[name] = 0  # only a damaged row lacks its id: it still reads
    if "status" in fitters or "outcome" in fitters:
        key = "status" if "status" in fitters else "outcome"
        kept[key] = kept.get(key) or "?"
    return record(**kept)


@functools.cache
def _fitters(record: type) -> dict[str, Callable[[Any], Any]]:
    """For each field of a record, what makes a stored value fit its type: chosen once per
    record type, not again for every field of every row read (a long history has many)."""
    return {item.name: _fitter(item.type) for item in fields(record)}


@functools.cache
def _defaults(record: type) -> dict[str, Any]:
    """The fields of a record whose default is a value, not None."""
    return {
        item.name: item.default
        for item in fields(record)
        if item.default is not MISSING and item.default is not None
    }


def _fitter(annotation: str) -> Callable[[Any], Any]:
    if annotation.startswith("int"):
        return _integer
    if annotation.startswith("float"):
        return _real
    if annotation == "bool":
        return _boolean
    if annotation.startswith("list"):
        return decode_command
    if annotation.startswith("dict"):
        return decode_feedback
    return as_text


def _boolean(value: Any) -> bool:
    return value if type(value) is bool else bool(_integer(value))


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


def as_text(value: Any) -> str:
    """A stored value as text: bytes decoded (undecodable ones escaped), anything else str()."""
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return value if isinstance(value, str) else str(value)


def decode_feedback(stored: Any) -> dict[str, str] | None:
    """A stored feedback object; None when it is missing or damaged, only text values kept."""
    try:
        values = jsoncodec.loads(stored)
    except (ValueError, TypeError):
        return None
    if not isinstance(values, dict):
        return None
    return {key: value for key, value in values.items() if isinstance(value, str)}


def encode_command(command: Sequence[str] | None) -> str | None:
    """argv is stored as a JSON array so arguments with spaces survive the round trip."""
    return None if command is None else jsoncodec.dumps([storable(arg) for arg in command]).decode()


def decode_command(stored: Any) -> list[str] | None:
    """A stored argv; None when missing or damaged."""
    try:
        command = jsoncodec.loads(stored)
    except (ValueError, TypeError):
        return None
    if not isinstance(command, list) or not all(isinstance(arg, str) for arg in command):
        return None
    return command


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
