"""Operations on tasks from outside their supervisor: housekeeping, kill, feedback, show.

`twctl` is a thin layer over these functions; a script can import them and do the same.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from taskwatcher.engine import process, wakeup
from taskwatcher.engine.errors import NotReserved, UnknownTask
from taskwatcher.engine.leftovers import stop_leftovers
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.ownership import Census, Owner, user_name
from taskwatcher.engine.records import task_record
from taskwatcher.engine.store import Store
from taskwatcher.grammar.errors import TaskwatcherError

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


class NotYourTask(TaskwatcherError, PermissionError):
    """The task's supervisor is gone and its processes belong to another user."""


def requester() -> str:
    """Who is asking, as history's `killed_by` shows it: the real user, not $USER."""
    return f"{user_name()}@{socket.gethostname()} (pid {os.getpid()})"


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
    as lost too; no signal is ever sent on its account. A supervisor whose socket is bound
    is alive, even when a step of the wall clock moved the create times psutil reports.
    """
    if row["status"] == Status.RESERVED or row.get("host") != socket.gethostname():
        return False
    owner = owner_of(row)
    if owner is not None and wakeup.is_listening(owner.digest):
        return False  # its supervisor answers, whatever a step of the clock did to create times
    supervisor = supervisor_of(row)
    return supervisor is None or not process.is_same_process(supervisor)


def owner_of(row: dict[str, Any]) -> Owner | None:
    """Whose task the row says it is; None for a row recorded without a token."""
    return Owner.of_row(row.get("token_hash"), row.get("uid"))


def housekeep(store: Store, *, grace: float = LOST_GRACE) -> list[dict[str, Any]]:
    """Expire stale reservations and archive tasks whose supervisor vanished as LOST.

    What is left of a lost task is stopped first (SIGTERM, then SIGKILL after `grace`): the
    processes that prove to be the task's by its token, never a pid read from the row. A
    lost task of another user is left for that user or root (`ghosts_of_others`), who can
    stop its processes. Returns the history records written, so `twctl update` can say
    what it did.
    """
    ended = list(store.housekeep())
    census = None  # one look over /proc, taken once the first lost task shows
    for row in store.list_tasks():
        if is_ghost(row) and _may_clean_up(row):
            census = census or Census.take()
            lost = _archive_lost(store, row, grace, census)
            if lost is not None:
                ended.append(lost)
    return ended


def ghosts_of_others(store: Store) -> list[dict[str, Any]]:
    """Lost tasks that housekeeping leaves alone: their processes belong to another user."""
    return [row for row in store.list_tasks() if is_ghost(row) and not _may_clean_up(row)]


def _may_clean_up(row: dict[str, Any]) -> bool:
    owner = owner_of(row)
    return owner is None or owner.caller_may_act()


def _archive_lost(
    store: Store, row: dict[str, Any], grace: float, census: Census | None = None
) -> dict[str, Any] | None:
    census = census or Census.take()
    owner = owner_of(row)
    found = owner is not None and owner.digest in census.tokens
    stopped = stop_leftovers(owner, grace) if found else None
    reason = _lost_reason(row)
    notes = []
    if stopped is not None and stopped.denied:
        notes.append(
            f"could not stop pid {', '.join(map(str, stopped.denied))} (permission denied)"
        )
    if owner is not None and (hidden := census.hidden.get(owner.uid)):
        notes.append(
            f"could not check pid {', '.join(map(str, hidden))} (environment unreadable:"
            " a non-dumpable program; only root can tell whether it is the task's)"
        )
    for note in notes:
        log.warning("task %s: %s", row["taskid"], note)
        reason += f"; {note}"
    try:
        return store.archive(
            row["taskid"],
            outcome=Status.LOST,
            termsignal=None if stopped is None else stopped.last_signal,
            termerror=reason,
            exitcode=None,  # the last feedback its supervisor published becomes the final one
        )
    except UnknownTask:
        return None  # its supervisor archived it between our read and our write


def _lost_reason(row: dict[str, Any]) -> str:
    """Why the task counts as lost, naming the recorded supervisor as the row has it."""
    pid = row.get("supervisor_pid")
    if supervisor_of(row) is None:
        reason = (
            f"supervisor unidentifiable (pid {pid!r}, create time {row.get('supervisor_ctime')!r})"
        )
    else:
        reason = f"supervisor (pid {pid}) vanished"
    if owner_of(row) is None:
        reason += "; recorded without a task token, so no process was looked for"
    return reason


def current_feedback(store: Store, taskid: int) -> dict[str, str]:
    """The task's feedback now: as its supervisor last published it, from history once ended.

    The file itself is never opened here: its path comes from the database, which anyone
    able to write it could point at any file.
    """
    row = live_task(store, taskid)
    if row is None:
        return _final_feedback(store, taskid)
    if row["status"] == Status.RESERVED:
        raise NoFeedback(f"task {taskid} is reserved and has not started")
    if not row["feedback"]:
        raise NoFeedback(f"task {taskid} does not write feedback")
    try:
        return store.load_feedback(taskid)
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
        row["feedback_values"] = store.load_feedback(taskid)
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
    lost = is_ghost(row)
    if lost and not _may_clean_up(row):  # said before anything is written
        owner = user_name(row["uid"])
        who = owner if row["uid"] == 0 else f"{owner} or root"
        raise NotYourTask(
            f"task {taskid}: its supervisor is gone and its processes belong to "
            f"{owner}: only {who} can stop them"
        )
    store.request_kill(taskid, who)
    if lost:
        return _archive_lost(store, row, LOST_GRACE)
    if wakeup.valid(row.get("token_hash")):
        wakeup.wake(row["token_hash"])
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
