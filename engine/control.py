"""Operations on tasks from outside their supervisor: housekeeping, kill, feedback, show.

`twctl` is a thin layer over these functions; a script can import them and do the same.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from taskwatcher.engine import process
from taskwatcher.engine.errors import NotReserved, UnknownTask
from taskwatcher.engine.machine import Status
from taskwatcher.engine.records import task_record
from taskwatcher.engine.store import Store
from taskwatcher.grammar import FeedbackReader, ReaderState
from taskwatcher.grammar.errors import InvalidReaderState, TaskwatcherError

log = logging.getLogger(__name__)

#: How long `update` lets the remnants of a lost task clean up before SIGKILL.
LOST_GRACE = 2.0
#: How long `kill` waits by default for the supervisor to stop and archive the task.
DEFAULT_KILL_WAIT = 30.0
_POLL_INTERVAL = 0.05
#: Linux's PID_MAX_LIMIT: a larger recorded pid can only come from an edited row.
_PID_MAX = 2**22


class NoFeedback(TaskwatcherError):
    """The task does not write a feedback file (or has not started yet)."""


class KillTimeout(TaskwatcherError, TimeoutError):
    """The task was asked to stop but had not ended when the wait ran out."""


class ForeignTask(TaskwatcherError):
    """The task runs on another host, whose supervisor no signal from here can reach."""


class LiveTasksExist(TaskwatcherError):
    """Re-initialising would drop live tasks; --force is needed."""


def requester() -> str:
    """Who is asking, as history's `killed_by` shows it."""
    return f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()})"


def live_task(store: Store, taskid: int) -> dict[str, Any] | None:
    """A live task's record (as `list` shows it), or None once it has ended."""
    row = store.get_task(taskid)
    return None if row is None else task_record(row, time.time())


def supervisor_of(row: dict[str, Any]) -> process.ProcessIdentity | None:
    """The supervisor the row records, or None for a reservation or a row that names none."""
    return _recorded_identity(row.get("supervisor_pid"), row.get("supervisor_ctime"))


def _recorded_identity(pid: Any, create_time: Any) -> process.ProcessIdentity | None:
    """The process a row names, or None when an edited or damaged row cannot name one safely.

    Checked here rather than trusted: a pid of 0 or -1 would reach whole process groups.
    """
    if not _is_pid(pid) or type(create_time) not in (int, float):
        return None
    if not math.isfinite(create_time):
        return None
    return process.ProcessIdentity(pid, float(create_time))


def _is_pid(value: object) -> bool:
    return type(value) is int and 0 < value <= _PID_MAX


def is_ghost(row: dict[str, Any]) -> bool:
    """A started task on this host whose supervisor is gone, its pid reused, or unrecorded.

    A row whose supervisor cannot be identified has nobody left to archive it, so it counts
    as lost too; no signal is ever sent on its account.
    """
    if row["status"] == Status.RESERVED or row.get("host") != socket.gethostname():
        return False
    supervisor = supervisor_of(row)
    return supervisor is None or not process.is_same_process(supervisor)


def housekeep(store: Store, *, grace: float = LOST_GRACE) -> list[dict[str, Any]]:
    """Expire stale reservations and archive tasks whose supervisor vanished as LOST.

    What is left of a lost task's process group is stopped first (SIGTERM, then SIGKILL
    after `grace`), and only after matching pid and create time. Returns the history
    records written, so `twctl update` can say what it did.
    """
    ended = list(store.housekeep())
    for row in store.list_tasks():
        if is_ghost(row):
            lost = _archive_lost(store, row, grace)
            if lost is not None:
                ended.append(lost)
    return ended


def _archive_lost(store: Store, row: dict[str, Any], grace: float) -> dict[str, Any] | None:
    last_signal = None
    leader = _recorded_identity(row.get("pid"), row.get("child_ctime"))
    pgid = row.get("pgid")
    if leader is not None and _is_pid(pgid) and process.remnants(leader, pgid):
        last_signal = process.terminate_task(leader, pgid, grace=grace)
    try:
        return store.archive(
            row["taskid"],
            outcome=Status.LOST,
            termsignal=last_signal,
            termerror=_lost_reason(row),
            exitcode=None,
            feedback=_last_feedback(store, row),
        )
    except UnknownTask:
        return None  # its supervisor archived it between our read and our write


def _lost_reason(row: dict[str, Any]) -> str:
    """Why the task counts as lost, naming the recorded supervisor as the row has it."""
    pid = row.get("supervisor_pid")
    if supervisor_of(row) is None:
        return (
            f"supervisor unidentifiable (pid {pid!r}, create time {row.get('supervisor_ctime')!r})"
        )
    return f"supervisor (pid {pid}) vanished"


def _last_feedback(store: Store, row: dict[str, Any]) -> dict[str, str] | None:
    """What the task last reported, read from its file where it still is."""
    if not row.get("feedback"):
        return None
    return _poll_feedback(store, row, final=True)


def _poll_feedback(store: Store, row: dict[str, Any], *, final: bool = False) -> dict[str, str]:
    """Parse only what the file gained since the last call, and save where reading stopped.

    `final` also takes an unterminated last line, for a task that will write no more.
    """
    _, saved = store.load_feedback(row["taskid"])
    values, state = read_feedback(row["feedpath"], saved, final=final)
    store.save_feedback(row["taskid"], values, state)
    return values


def read_feedback(
    path: str | os.PathLike[str], saved_state: bytes | None, *, final: bool = False
) -> tuple[dict[str, str], bytes]:
    """Resume reading a feedback file where `saved_state` stopped; returns values and new state.

    What the reader had to skip (an over-long line, a FIFO or device in the file's place) is
    logged as a warning, so the user hears of it while the values still print. A saved state
    that cannot be restored is dropped and the file read from its start.
    """
    try:
        state = ReaderState.from_json(saved_state) if saved_state else None
    except InvalidReaderState as error:
        log.warning("%s: %s; reading from the start", path, error)
        state = None
    reader = FeedbackReader(path, state=state)
    values = reader.poll(final=final)
    for warning in reader.warnings:
        log.warning("%s", warning)
    return values, reader.state.to_json()


def current_feedback(store: Store, taskid: int) -> dict[str, str]:
    """The task's feedback now: parsed incrementally while it runs, from history once ended."""
    row = live_task(store, taskid)
    if row is None:
        return _final_feedback(store, taskid)
    if row["status"] == Status.RESERVED:
        raise NoFeedback(f"task {taskid} is reserved and has not started")
    if not row["feedback"]:
        raise NoFeedback(f"task {taskid} does not write feedback")
    try:
        return _poll_feedback(store, row)
    except UnknownTask:
        return _final_feedback(store, taskid)  # archived while we read: history has the end


def _final_feedback(store: Store, taskid: int) -> dict[str, str]:
    record = _history_or_unknown(store, taskid)
    if record["feedback"] is None:
        raise NoFeedback(f"task {taskid} ended without feedback ({record['outcome']})")
    return record["feedback"]


def _history_or_unknown(store: Store, taskid: int) -> dict[str, Any]:
    record = store.history_of(taskid)
    if record is None:
        raise UnknownTask(f"no task {taskid}")
    return record


def describe(store: Store, taskid: int) -> dict[str, Any]:
    """Everything known about one task, live or finished, its feedback included."""
    row = live_task(store, taskid)
    if row is None:
        return {"state": "finished", **_history_or_unknown(store, taskid)}
    if row["feedback"] and row["status"] != Status.RESERVED:
        row["feedback_values"] = _poll_feedback(store, row)
    return {"state": "live", **row}


def request_stop(store: Store, taskid: int, who: str) -> dict[str, Any] | None:
    """Ask a task to end: cancel a reservation at once, or tell the supervisor to kill it.

    Returns the history record when the task ended right here (cancelled reservation or
    lost supervisor), None when its supervisor was told and will archive it.
    """
    row = _live_or_ended(store, taskid)
    if row["status"] == Status.RESERVED:
        try:
            return store.cancel_reservation(taskid, who)
        except NotReserved:
            row = _live_or_ended(store, taskid)  # twrun claimed it meanwhile: stop it running
    if row.get("host") != socket.gethostname():
        raise ForeignTask(f"task {taskid} runs on host {row.get('host')!r}: stop it from there")
    store.request_kill(taskid, who)
    if is_ghost(row):
        return _archive_lost(store, row, LOST_GRACE)
    supervisor = supervisor_of(row)
    if supervisor is not None:
        process.signal_identity(supervisor, signal.SIGUSR1)
    return None


def _live_or_ended(store: Store, taskid: int) -> dict[str, Any]:
    """The live task's record; UnknownTask says whether it never existed or has ended."""
    row = live_task(store, taskid)
    if row is None:
        record = _history_or_unknown(store, taskid)
        raise UnknownTask(f"task {taskid} has already ended ({record['outcome']})")
    return row


def kill_tasks(
    store: Store,
    taskids: list[int],
    who: str,
    wait: float,
    on_wait: Callable[[list[int]], None] | None = None,
) -> list[dict[str, Any]]:
    """Stop tasks and wait for their ends; returns their history records in the given order.

    A task that ended before its turn (`killall` lists names first) is reported as history
    has it instead of aborting the others. KillTimeout names those still running.
    """
    ended: dict[int, dict[str, Any]] = {}
    for taskid in taskids:
        try:
            record = request_stop(store, taskid, who)
        except UnknownTask:
            record = _history_or_unknown(store, taskid)
        if record is not None:
            ended[taskid] = record
    pending = [taskid for taskid in taskids if taskid not in ended]
    ended.update(zip(pending, wait_ended(store, pending, wait, on_wait=on_wait), strict=True))
    return [ended[taskid] for taskid in taskids]


def wait_ended(
    store: Store,
    taskids: list[int],
    timeout: float,
    *,
    on_wait: Callable[[list[int]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """Wait until every task is in history; KillTimeout names those still running."""
    deadline = clock() + timeout
    pending = list(taskids)
    while True:
        pending = [taskid for taskid in pending if live_task(store, taskid) is not None]
        if not pending:
            return [store.history_of(taskid) for taskid in taskids]
        if clock() >= deadline:
            listed = ", ".join(map(str, pending))
            raise KillTimeout(f"task(s) {listed} still running after {timeout:g} s")
        if on_wait is not None:
            on_wait(pending)
        time.sleep(_POLL_INTERVAL)


def tasks_named(store: Store, name: str) -> list[int]:
    """Ids of the live tasks called `name`."""
    return [record["taskid"] for record in store.list_tasks(name=name)]


def reinitialize(store: Store, *, force: bool = False) -> None:
    """Recreate the database; refuse while tasks are live unless forced."""
    live = store.live_count()
    if live and not force:
        raise LiveTasksExist(f"{live} live task(s) in the database; use --force to drop them")
    store.reinitialize()
