"""A task's processes as its supervisor knows them first-hand, and stopping them all.

They are the members of its process group and the descendants the supervisor adopted as
subreaper. Zombies and reaping: a zombie counts as gone, since it can no longer run, so
waiting never hangs on one. The task's leader is never reaped here: its exit status belongs
to whoever launched it (its Popen, watched with `ChildWatch`). Other exited children of the
caller, such as orphans a subreaper adopted, are reaped by `terminate_task` and
`reap_adopted`.
"""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from contextlib import suppress

from taskwatcher.engine.exitstatus import signal_name
from taskwatcher.engine.identity import (
    ProcessIdentity,
    current_row,
    identity_of,
    is_same_process,
    same_start,
    signal_identity,
)
from taskwatcher.engine.procfs import ProcRow, process_table
from taskwatcher.grammar.datatype import datatype

#: Looks in a row that must find nothing running before a task counts as stopped.
CALM_LOOKS = 3
#: Longest pause between two checks while waiting for processes to go.
MAX_POLL_INTERVAL = 0.05


@datatype(frozen=True)
class StopResult:
    """How stopping a task's processes went: the last signal needed, and who refused it.

    `denied` lists the pids the kernel would not let the caller signal (a process that became
    root through sudo, or another user's): they may still run, and the caller says so.
    """

    last_signal: str
    denied: tuple[int, ...] = ()


def remnants(
    leader: ProcessIdentity, pgid: int, *, adopter: int | None = None
) -> list[ProcessIdentity]:
    """The live processes that still belong to the task, zombies and the caller excluded.

    That is the members of process group pgid, unless the group id was reused (a process
    holds pid pgid with another create time than the leader's: then no member counts); the
    leader itself and its descendants while it is the same process; and, when adopter is
    given (a subreaper supervisor's own pid), the adopter's descendants, which include the
    task's orphans that double-forked or setsid()'d away.
    """
    return _snapshot(leader, pgid, adopter).processes


def left_nothing(pgid: int) -> bool:
    """True only when a task whose leader was reaped surely left no process behind: its
    group is empty, and the caller (its subreaper) has no child at all, so no descendant.

    Two system calls instead of a pass over /proc (thousands of files on a busy host, read
    by every supervisor as its task ends). False means: look the long way, with `remnants`.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        pass
    except PermissionError:  # a member the caller may not signal: something is there
        return False
    else:
        return False
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


def terminate_task(
    leader: ProcessIdentity,
    pgid: int,
    grace: float,
    first: int = signal.SIGTERM,
    *,
    adopter: int | None = None,
    idle: Callable[[float], object] = time.sleep,
) -> StopResult:
    """Stop every remnant of the task: `first`, up to grace seconds, then SIGKILL for the rest.

    The result names the last signal needed ('SIGTERM' or 'SIGKILL' with the default first);
    a task with nothing left counts as stopped by `first`. The remnants are listed before any
    signal, so descendants are known before they get re-parented; the group is signalled with
    one killpg(), which also reaches members forked since the listing. A process the kernel
    will not let us signal is reported in `denied` and not waited for; waiting ends after
    grace even for processes that cannot die (uninterruptible sleep). The leader is never
    reaped here (see the module docstring); other exited children of the caller among the
    remnants (orphans adopted by a subreaper) are. `idle(seconds)` is how the waits pass:
    a supervisor reads the task's output meanwhile, so a task that writes as it shuts down
    is not blocked on a full pipe.
    """
    snapshot = _snapshot(leader, pgid, adopter)
    denied = _send(snapshot, first)
    survivors = _wait_gone(_without(snapshot.processes, denied), grace, leader.pid, idle)
    rest = _freeze(lambda: _snapshot(leader, pgid, adopter).including(survivors), denied, grace)
    if not _without(rest.processes, denied) and not rest.outsider_groups:
        return StopResult(signal_name(first), tuple(sorted(denied)))
    denied |= _send(rest, signal.SIGKILL, each=True, whole_groups=True)
    _wait_gone(_without(rest.processes, denied), grace, leader.pid, idle)
    return StopResult(signal_name(signal.SIGKILL), tuple(sorted(denied)))


def _freeze(look: Callable[[], _Snapshot], denied: set[int], limit: float) -> _Snapshot:
    """SIGSTOP the task's processes until CALM_LOOKS looks in a row find none running, for
    up to `limit` s.

    A stopped process cannot fork: a task that keeps forking and exiting (its pid hopping
    ahead of every listing) is caught whole, then killed at once. One look is not enough:
    /proc is not listed atomically, and a process forked during a listing can be missed by
    it. Returns the last look.
    """
    deadline = time.monotonic() + limit
    calm = 0
    while True:
        snapshot = look()
        running = [p for p in _without(snapshot.processes, denied) if not _stopped(p)]
        calm = 0 if running else calm + 1
        if calm >= CALM_LOOKS or time.monotonic() >= deadline:
            return snapshot
        denied |= _send(snapshot, signal.SIGSTOP, each=True, whole_groups=True)
        time.sleep(0.001)


def _stopped(process: ProcessIdentity) -> bool:
    """Stopped, a zombie, or gone: it cannot fork any more."""
    try:
        row = current_row(process)
    except PermissionError:
        return False
    return row is None or row.state in ("T", "Z")


def reap_adopted(keep: Collection[int] = ()) -> list[int]:
    """Collect the exit statuses of the caller's exited children, except the pids in keep.

    A subreaper inherits orphans, which become its zombies when they exit; keep lists the
    children whose status someone still needs (the task's leader, owned by its Popen).
    Returns the reaped pids. The kernel is asked first, which costs nothing while no child
    has exited; only when a kept child is waitable are the others looked up in /proc.
    """
    reaped: list[int] = []
    while True:  # ask the kernel which child is waitable: no scan of /proc on every wake-up
        try:
            waitable = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if waitable is None:
            return reaped
        if waitable.si_pid in keep:  # it hides the others from waitid: look them up instead
            me = os.getpid()
            zombies = [row.pid for row in process_table() if row.ppid == me and row.zombie]
            return reaped + [pid for pid in zombies if pid not in keep and _reap(pid)]
        if not _reap(waitable.si_pid):
            return reaped
        reaped.append(waitable.si_pid)


@datatype(frozen=True)
class _Snapshot:
    """The task's processes at one moment; `group` is the pgid to killpg, if that is safe."""

    group: int | None
    members: list[ProcessIdentity]
    outsiders: list[ProcessIdentity]
    #: Other groups whose every member is the task's (a daemon's session, a `set -m` job).
    outsider_groups: tuple[int, ...] = ()

    @property
    def processes(self) -> list[ProcessIdentity]:
        return self.members + self.outsiders

    def including(self, extra: Iterable[ProcessIdentity]) -> _Snapshot:
        """This snapshot plus processes seen earlier that have left the task's tree since."""
        known = {process.pid for process in self.processes}
        missing = [process for process in extra if process.pid not in known]
        return _Snapshot(self.group, self.members, self.outsiders + missing, self.outsider_groups)


def _snapshot(leader: ProcessIdentity, pgid: int, adopter: int | None) -> _Snapshot:
    """List the task's live processes in one pass over /proc."""
    me = os.getpid()
    rows = [row for row in process_table() if row.pid != me]
    live = [row for row in rows if not row.zombie]
    members = (
        {row.pid for row in live if row.pgid == pgid} if _group_is_tasks(leader, pgid) else set()
    )
    leader_runs = is_same_process(leader)
    roots = [leader.pid] if leader_runs else []
    if adopter is not None:
        roots.append(adopter)
    # Through zombies too: a child whose parent just exited hangs from it until it is reaped.
    everything = _descendants(rows, roots)
    tree = everything & {row.pid for row in live}
    if leader_runs:
        tree.add(leader.pid)
    # killpg() would also hit the caller if it is in the group; then signal members one by one.
    group = pgid if members and pgid != os.getpgrp() else None
    groups = _whole_groups(rows, everything | tree, {pgid, os.getpgrp()})
    live_now = {row.pid: row for row in live}
    return _Snapshot(group, _lookup(members, live_now), _lookup(tree - members, live_now), groups)


def _whole_groups(rows: list[ProcRow], task: set[int], known: set[int]) -> tuple[int, ...]:
    """The groups of the task's processes, zombies included, that hold nothing else alive.

    A process that keeps forking and exiting may be missing from every listing of /proc, but
    its group shows in its exited ancestors. Only a group made of the task's processes alone
    may be signalled as one: a process can join any group of its session, the user's shell's
    too.
    """
    groups = {row.pgid for row in rows if row.pid in task}
    foreign = {row.pgid for row in rows if row.pid not in task and not row.zombie}
    return tuple(sorted(groups - foreign - known))


def _group_is_tasks(leader: ProcessIdentity, pgid: int) -> bool:
    """Whether group pgid can still be the task's.

    The kernel keeps a group id out of reuse while any member lives, so the group is the
    task's unless another process now holds pid pgid.
    """
    holder = identity_of(pgid)
    return holder is None or same_start(holder.create_time, leader.create_time)


def _descendants(rows: Iterable[ProcRow], roots: Iterable[int]) -> set[int]:
    """Pids below the roots in the parent/child tree of rows (the roots themselves excluded)."""
    children: dict[int, list[int]] = defaultdict(list)
    for row in rows:
        children[row.ppid].append(row.pid)
    found: set[int] = set()
    pending = list(roots)
    while pending:
        for child in children[pending.pop()]:
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def _lookup(pids: Iterable[int], rows: dict[int, ProcRow]) -> list[ProcessIdentity]:
    """The identities (each pinning its create time) of the pids, as the listing saw them."""
    return [ProcessIdentity.of(rows[pid]) for pid in sorted(pids) if pid in rows]


def _send(
    snapshot: _Snapshot, sig: int, *, each: bool = False, whole_groups: bool = False
) -> set[int]:
    """killpg the group when that is safe, every other process individually, identity-checked.

    With `each`, the members are signalled one by one as well, so that one the kernel refuses
    is known by pid; with `whole_groups`, the outsiders' own groups are signalled as one too,
    which also reaches what they forked since the listing. Returns the pids that refused.
    """
    individually = snapshot.processes
    groups = [snapshot.group] if snapshot.group is not None else []
    if whole_groups:
        groups += snapshot.outsider_groups
    for group in groups:
        with suppress(ProcessLookupError, PermissionError):  # EPERM: no member could be reached
            os.killpg(group, sig)
    if snapshot.group is not None and not each:
        individually = snapshot.outsiders
    denied = set()
    for process in individually:
        try:
            signal_identity(process, sig)
        except PermissionError:
            denied.add(process.pid)
    return denied


def _without(processes: list[ProcessIdentity], pids: Collection[int]) -> list[ProcessIdentity]:
    return [process for process in processes if process.pid not in pids]


def _wait_gone(
    processes: list[ProcessIdentity],
    timeout: float,
    leader_pid: int,
    idle: Callable[[float], object] = time.sleep,
) -> list[ProcessIdentity]:
    """Wait up to timeout for the processes to exit; return those still running."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        processes = [process for process in processes if not _gone(process, leader_pid)]
        remaining = deadline - time.monotonic()
        if not processes or remaining <= 0:
            return processes
        idle(min(pause, remaining))
        pause = min(pause * 2, MAX_POLL_INTERVAL)


def _gone(process: ProcessIdentity, leader_pid: int) -> bool:
    """Exited, a zombie counting as exited; reaps it if it is the caller's, but not the leader."""
    try:
        row = current_row(process)
    except PermissionError:
        return False
    if row is None:  # exited, or its pid already belongs to someone else
        return True
    if not row.zombie:
        return False
    if process.pid != leader_pid:
        _reap(process.pid)
    return True


def _reap(pid: int) -> bool:
    """waitpid without blocking; False when pid is not an exited child of the caller."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False
