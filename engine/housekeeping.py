"""Housekeeping: stale reservations expire, and tasks whose supervisor vanished end LOST.

What is left of a lost task is stopped first: the processes that prove to be the task's by
its token (see `ownership`), never a pid read from the row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from taskwatcher.engine import identity, wakeup
from taskwatcher.engine.errors import UnknownTask
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.leftovers import stop_leftovers
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.ownership import Census, Owner
from taskwatcher.engine.records import Ended, Ending, Task
from taskwatcher.engine.settings import host_id
from taskwatcher.engine.store import Store

log = get_logger(__name__)

#: How long the remnants of a lost task may clean up after SIGTERM, before SIGKILL.
LOST_GRACE = 2.0
#: Linux's PID_MAX_LIMIT: a larger recorded pid can only come from an edited row.
_PID_MAX = 2**22


def housekeep(store: Store, *, grace: float = LOST_GRACE) -> list[Ended]:
    """Expire stale reservations and archive tasks whose supervisor vanished as LOST.

    A lost task of another user is left for that user or root (`ghosts_of_others`), who can
    stop its processes. On a database of many hosts, a task of any host whose supervisor's
    lease ran out is LOST too, after this host's own lost tasks had their processes stopped;
    then what is left here of tasks other hosts found LOST is stopped. Returns the history
    records written, so `twctl update` can say what it did. A store opened read-only is left
    as it is: nothing could be archived, and the caller only reads.
    """
    if store.read_only:
        return []
    ended = list(store.expire_reservations())
    census = None  # one look over /proc, taken once the first lost task shows
    for task in store.list_tasks(started=True):
        if is_ghost(task) and may_clean_up(task):
            census = census or Census.take()
            lost = archive_lost(store, task, grace, census)
            if lost is not None:
                ended.append(lost)
    ended += store.expire_leases()
    if store.many_hosts:
        sweep_leftovers(store, grace, census)
    return ended


def sweep_leftovers(store: Store, grace: float, census: Census | None = None) -> None:
    """Stop what is left of this host's tasks that another host archived LOST (their lease
    ran out: the supervisor died or froze while nobody here looked), as archive_lost does
    for the ones found here. A task of another user stays for that user, or root."""
    for ended in store.unswept(host_id()):
        owner = Owner.of_row(ended.token_hash, ended.uid)
        if owner is not None and not owner.caller_may_act():
            continue
        if owner is not None:
            census = census or Census.take()
            if owner.digest in census.tokens:
                stopped = stop_leftovers(owner, grace)
                log.info("task %s: stopped what was left of it (%s)", ended.taskid, stopped)
        store.mark_swept(ended.taskid)


def ghosts_of_others(store: Store) -> list[Task]:
    """Lost tasks that housekeeping leaves alone: their processes belong to another user."""
    return [
        task for task in store.list_tasks(started=True) if is_ghost(task) and not may_clean_up(task)
    ]


def is_ghost(task: Task) -> bool:
    """A started task on this host whose supervisor is gone, its pid reused, or unrecorded.

    A row whose supervisor cannot be identified has nobody left to archive it, so it counts
    as lost too; no signal is ever sent on its account. A supervisor whose socket is bound
    is alive, even when a step of the wall clock moved the create times /proc implies.
    """
    if task.status == Status.RESERVED or task.host != host_id():
        return False
    owner = owner_of(task)
    if owner is not None and wakeup.is_listening(owner.digest):
        return False
    supervisor = supervisor_of(task)
    return supervisor is None or not identity.is_same_process(supervisor)


def owner_of(task: Task) -> Owner | None:
    """Whose task the row says it is; None for a row recorded without a token."""
    return Owner.of_row(task.token_hash, task.uid)


def may_clean_up(task: Task) -> bool:
    """Whether the caller may stop the task's processes: its user, or root."""
    owner = owner_of(task)
    return owner is None or owner.caller_may_act()


def supervisor_of(task: Task) -> identity.ProcessIdentity | None:
    """The supervisor the row records, or None when an edited or damaged row cannot name one
    safely (a pid of 0 or -1 would reach whole process groups)."""
    pid, created = task.supervisor_pid, task.supervisor_ctime
    if pid is None or not 0 < pid <= _PID_MAX or created is None or not math.isfinite(created):
        return None
    return identity.ProcessIdentity(pid, created)


def archive_lost(
    store: Store, task: Task, grace: float, census: Census | None = None
) -> Ended | None:
    """Stop what is left of a lost task and archive it LOST; None when its supervisor
    archived it meanwhile. The last feedback it published becomes the final one."""
    census = census or Census.take()
    owner = owner_of(task)
    stopped = stop_leftovers(owner, grace) if owner and owner.digest in census.tokens else None
    notes = []
    if stopped is not None and stopped.denied:
        denied = ", ".join(map(str, stopped.denied))
        notes.append(f"could not stop pid {denied} (permission denied)")
    if owner is not None and (hidden := _may_be_its(census.hidden.get(owner.uid, []), task)):
        notes.append(
            f"could not check pid {', '.join(map(str, hidden))} (environment unreadable:"
            " a non-dumpable program; only root can tell whether it is the task's)"
        )
    for note in notes:
        log.warning("task %s: %s", task.taskid, note)
    ending = Ending(
        Status.LOST,
        termsignal=None if stopped is None else stopped.last_signal,
        termerror="; ".join([_lost_reason(task), *notes]),
    )
    try:
        return store.archive(task.taskid, ending)
    except UnknownTask:
        return None


#: Seconds a create time read from /proc may be early (whole-second boot time, clock ticks).
_CREATE_TIME_SLACK = 1.0


def _may_be_its(pids: list[int], task: Task) -> list[int]:
    """Those of `pids` that may be the task's: started no earlier than it (init, or a
    user's ssh-agent, running before the task began, is none of its processes)."""
    if task.starttime is None:
        return pids
    started = task.starttime - _CREATE_TIME_SLACK
    identities = (identity.identity_of(pid) for pid in pids)
    return [each.pid for each in identities if each is not None and each.create_time >= started]


def _lost_reason(task: Task) -> str:
    """Why the task counts as lost, naming the recorded supervisor as the row has it."""
    if supervisor_of(task) is None:
        reason = (
            f"supervisor unidentifiable (pid {task.supervisor_pid!r},"
            f" create time {task.supervisor_ctime!r})"
        )
    else:
        reason = f"supervisor (pid {task.supervisor_pid}) vanished"
    if owner_of(task) is None:
        reason += "; recorded without a task token, so no process was looked for"
    return reason


#: How often a command waiting for tasks runs housekeeping, which archives the tasks nobody
#: else will.
HOUSEKEEPING_INTERVAL = 1.0


class Upkeep:
    """Waits for the store to change, or runs housekeeping instead when it is due: whoever
    waits for tasks sees a task whose supervisor died end LOST, and a reservation nobody
    launches end EXPIRED, rather than waiting for them in vain."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self._store, self._clock = store, clock
        self._due = clock() + HOUSEKEEPING_INTERVAL

    def wait(self, timeout: float) -> bool:
        """Whether the store may have changed (housekeeping counts as a change)."""
        now = self._clock()
        if now >= self._due:
            housekeep(self._store)
            self._due = now + HOUSEKEEPING_INTERVAL
            return True
        return self._store.wait_for_change(min(timeout, self._due - now))
