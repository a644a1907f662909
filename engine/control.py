"""Operations on tasks from outside their supervisor: kill, wait, feedback, show, listings.

`twctl` is a thin layer over these functions; a script can import them and do the same.
Housekeeping is `engine.housekeeping`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from taskwatcher.engine import wakeup
from taskwatcher.engine.errors import (
    ForeignTask,
    KillTimeout,
    LiveTasksExist,
    NoFeedback,
    NotReserved,
    NotYourTask,
    UnknownTask,
)
from taskwatcher.engine.housekeeping import (
    LOST_GRACE,
    Upkeep,
    archive_lost,
    is_ghost,
    may_clean_up,
)
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.ownership import user_name
from taskwatcher.engine.records import Ended, Task
from taskwatcher.engine.settings import host_id
from taskwatcher.engine.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: How long `kill` waits by default for the supervisor to stop and archive the task.
DEFAULT_KILL_WAIT = 30.0


def default_kill_wait(store: Store) -> float:
    """How long `kill` waits unless told: on a database of many hosts, long enough for the
    lease of a task whose host died to run out, so that the kill ends LOST, not in a wait
    that gave up."""
    return DEFAULT_KILL_WAIT if store.lease is None else max(DEFAULT_KILL_WAIT, store.lease + 5)


def requester() -> str:
    """Who is asking, as history's `killed_by` shows it: the real user, not $USER."""
    return f"{user_name()}@{host_id()} (pid {os.getpid()})"


def listing(store: Store, *, name: str | None = None, status: str | None = None) -> list[dict]:
    """Live tasks as `list --json` shows them, durations and timers as of now, and what each
    last said of itself (`said`: its feedback key `status`, as sd_notify `STATUS=` sets it)."""
    now = store.now()
    tasks = store.list_tasks(name=name, status=status)
    said = store.live_feedback() if tasks else {}
    return [
        {**task.as_json(now), "said": said.get(task.taskid, {}).get("status")} for task in tasks
    ]


def history_listing(store: Store, **filters: Any) -> Iterator[dict[str, Any]]:
    """Finished tasks as `history --json` shows them, one at a time (see iter_history)."""
    return (ended.as_json() for ended in store.iter_history(**filters))


def current_feedback(store: Store, taskid: int) -> dict[str, str]:
    """The task's feedback now: as its supervisor last published it (empty before the task
    wrote any), from history once ended.

    The file itself is never opened here: its path comes from the database, which anyone
    able to write it could point at any file.
    """
    task = store.get_task(taskid)
    if task is None:
        return _feedback_in_history(store, taskid)
    if task.status == Status.RESERVED:
        raise NoFeedback(f"task {taskid} is reserved and has not started")
    try:
        return store.load_feedback(taskid)
    except UnknownTask:
        return _feedback_in_history(store, taskid)  # archived while we read


def _feedback_in_history(store: Store, taskid: int) -> dict[str, str]:
    ended = _history_or_unknown(store, taskid)
    if ended.feedback is None:
        raise NoFeedback(f"task {taskid} ended without feedback ({ended.outcome})")
    return ended.feedback


def _history_or_unknown(store: Store, taskid: int) -> Ended:
    ended = store.history_of(taskid)
    if ended is None:
        raise UnknownTask(f"no task {taskid}")
    return ended


def describe(store: Store, taskid: int) -> dict[str, Any]:
    """Everything known about one task, live or finished, its feedback included."""
    task = store.get_task(taskid)
    if task is None:
        return {"state": "finished", **_history_or_unknown(store, taskid).as_json()}
    details = {"state": "live", **task.as_json(store.now())}
    if task.feedback and task.status != Status.RESERVED:
        details["feedback_values"] = store.load_feedback(taskid)
    return details


def request_stop(store: Store, taskid: int, who: str) -> Ended | None:
    """Ask a task to end: cancel a reservation at once, or tell the supervisor to kill it.

    Returns the history record when the task ended right here (cancelled reservation or
    lost supervisor), None when its supervisor was told and will archive it.
    """
    task = _live_or_ended(store, taskid)
    if task.status == Status.RESERVED:
        try:
            return store.cancel_reservation(taskid, who)
        except NotReserved:
            task = _live_or_ended(store, taskid)  # twrun claimed it meanwhile: stop it running
    if task.host != host_id():
        if not store.many_hosts:
            raise ForeignTask(f"task {taskid} runs on host {task.host!r}: stop it from there")
        store.request_kill(taskid, who)  # its supervisor hears it, or its lease runs out
        return None
    lost = is_ghost(task)
    if lost and not may_clean_up(task):  # said before anything is written
        owner = user_name(task.uid)
        who_may = owner if task.uid == 0 else f"{owner} or root"
        raise NotYourTask(
            f"task {taskid}: its supervisor is gone and its processes belong to "
            f"{owner}: only {who_may} can stop them"
        )
    store.request_kill(taskid, who)
    if lost:
        return archive_lost(store, task, LOST_GRACE)
    if wakeup.valid(task.token_hash):
        wakeup.wake(task.token_hash)
    return None


def _live_or_ended(store: Store, taskid: int) -> Task:
    """The live task; UnknownTask says whether it never existed or has ended."""
    task = store.get_task(taskid)
    if task is None:
        ended = _history_or_unknown(store, taskid)
        raise UnknownTask(f"task {taskid} has already ended ({ended.outcome})")
    return task


def kill_tasks(
    store: Store,
    taskids: list[int],
    who: str,
    wait: float,
    on_wait: Callable[[list[int]], None] | None = None,
) -> list[Ended]:
    """Stop tasks and wait for their ends; returns their history records in the given order.

    A task that ended before its turn (`killall` lists names first) is reported as history
    has it instead of aborting the others. KillTimeout names those still running.
    """
    ended: dict[int, Ended] = {}
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
) -> list[Ended]:
    """Wait until every task is in history; KillTimeout names those still running (a
    reservation counts as running), UnknownTask at once an id that never existed.

    Wakes when the store may have changed (`Store.wait_for_change`), so an end is seen as
    soon as it is recorded; `timeout` may be infinite. Housekeeping runs meanwhile
    (`Upkeep`).
    """
    for taskid in taskids:
        if store.get_task(taskid) is None:
            _history_or_unknown(store, taskid)
    deadline = clock() + timeout
    upkeep = Upkeep(store, clock)
    pending = list(taskids)
    while True:
        pending = [taskid for taskid in pending if store.get_task(taskid) is not None]
        if not pending:
            return [_history_or_unknown(store, taskid) for taskid in taskids]
        now = clock()
        if now >= deadline:
            listed = ", ".join(map(str, pending))
            raise KillTimeout(f"task(s) {listed} still running after {timeout:g} s")
        if on_wait is not None:
            on_wait(pending)
        upkeep.wait(deadline - now)


def tasks_named(store: Store, name: str) -> list[int]:
    """Ids of the live tasks called `name`."""
    return [task.taskid for task in store.list_tasks(name=name)]


def refuse_live_tasks(store: Store) -> None:
    """LiveTasksExist while any task is live: recreating the database would drop it."""
    live = store.live_count()
    if live:
        raise LiveTasksExist(f"{live} live task(s) in the database would be dropped")


def reinitialize(store: Store, *, force: bool = False) -> None:
    """Recreate the database; refuse while tasks are live unless forced."""
    if not force:
        refuse_live_tasks(store)
    store.reinitialize()
