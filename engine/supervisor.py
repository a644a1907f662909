"""Supervised execution: launch a reserved task, grade its heartbeat, stop it, archive it.

The loop sleeps in poll() on two descriptors, the child's pidfd and the signal pipe, with a
timeout that ends at the next health deadline (at most HEARTBEAT_CHECK_INTERVAL): the exit of
the child and any signal wake it at once. An idle task costs, per second, a stat() of its
feedback file, and a stat() of the database with one read of its row: the kill-request check
that still works when `twctl kill` cannot signal this process (another host, a lost signal).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from taskwatcher.engine import ownership, process
from taskwatcher.engine.errors import (
    FeedpathUnusable,
    LaunchError,
    NotReserved,
    ReservationRequired,
    StoreError,
    SupervisorUnusable,
    UnknownTask,
)
from taskwatcher.engine.feedbackfile import (
    FEEDBACK_FLAG,
    FeedbackFile,
    default_folder,
    feedback_elsewhere,
    feedback_name,
    given_folder,
)
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.location import default_feedpath
from taskwatcher.engine.machine import TaskState, release
from taskwatcher.engine.signals import KILL_REQUEST_SIGNAL, SignalInbox, watched_stop_signals
from taskwatcher.engine.stopping import SUPERVISOR_FAILED, StopReason, TaskEnd, end_of_task
from taskwatcher.engine.store import Store
from taskwatcher.engine.taskrow import TaskRow, archive
from taskwatcher.engine.wakeup import WAKE_PAUSE, WakeSocket
from taskwatcher.grammar.errors import TaskwatcherError

log = logging.getLogger(__name__)

#: File descriptors a supervisor may hold at once (database and journal, signal pipe, wake
#: socket, pidfds, the feedback file, /proc entries, the launch's pipe), with a margin.
DESCRIPTORS_NEEDED = 10
#: Seconds between SIGTERM and SIGKILL when a task is stopped (supervisord's stopwaitsecs idea).
DEFAULT_GRACE = 5.0
#: The feedback file's mtime is read at least this often; also the cap on heartbeat row writes.
HEARTBEAT_CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class LaunchRequest:
    """Everything `twrun` was asked to do, before anything is touched."""

    argv: Sequence[str]
    taskid: int | None = None
    name: str | None = None
    info1: str | None = None
    info2: str | None = None
    info3: str | None = None
    feedpath: Path | None = None
    timeout: float | None = None
    grace: float = DEFAULT_GRACE
    keep_feedback: bool = False

    @property
    def expects_feedback(self) -> bool:
        """The spec's rule: `--feedback` in the command, or a feedback folder given to twrun."""
        marked = any(
            arg == FEEDBACK_FLAG or arg.startswith(FEEDBACK_FLAG + "=") for arg in self.argv
        )
        return marked or self.feedpath is not None

    @property
    def heartbeat_timeout(self) -> float | None:
        """The timeout applies to the heartbeat, so a task without feedback has none; 0 is none."""
        return (self.timeout or None) if self.expects_feedback else None


@dataclass
class _Watch:
    """The supervisor's view of one running task between two polls.

    The machine runs on the monotonic clock (`monotonic`, as are the times kept here for
    pacing); the wall clock only dates the feedback file's mtime for the database.
    """

    row: TaskRow
    feedback: FeedbackFile
    reads_feedback: bool
    wake: WakeSocket
    state: TaskState
    wall: Callable[[], float]
    monotonic: Callable[[], float]
    heartbeat: float | None = None  # the last mtime seen, unix seconds
    last_look: float | None = None  # when the file was last stat'ed
    heartbeat_recorded: float | None = None  # the mtime last written to the row
    last_write: float | None = None  # when the heartbeat was last written
    unpublished: dict[str, str] | None = None  # values parsed but not yet in the database
    last_request_check: float | None = None
    stop: StopReason | None = None


def heartbeat_on_monotonic(
    mtime: float,
    wall_now: float,
    mono_now: float,
    since_last_look: float = HEARTBEAT_CHECK_INTERVAL,
) -> float:
    """Place a newly seen feedback mtime on the monotonic timeline the deadlines use.

    A new write happened after the previous look at the file, so when first seen it is at
    most that old: normally HEARTBEAT_CHECK_INTERVAL, longer after a pause of the supervisor
    (SIGSTOP, a suspended machine). Clamping its apparent age to that bounds what a step of
    the wall clock or an mtime in the future can do: neither kills nor shields a task, and a
    write made long ago during a pause is judged by its real age.
    """
    age = min(max(wall_now - mtime, 0.0), max(since_last_look, HEARTBEAT_CHECK_INTERVAL))
    return mono_now - age


def run_task(
    store: Store,
    request: LaunchRequest,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> TaskEnd:
    """Launch the request's command as a supervised task and return how it ended.

    Raises before launching anything when the reservation or the feedback folder is wrong,
    and LaunchError (with its 126/127 exit code) once a command that cannot start is archived
    as FAILED. Once the child runs, database trouble is logged and never leaves it unsupervised;
    NotRecorded at the end says the task ended but history could not be told.
    """
    check_descriptors()
    reservation = _find_reservation(store, request)
    taskid = reservation.taskid
    token = ownership.new_token()
    with ExitStack() as resources:
        row, feedback_file, inbox, wake = _claim(store, request, reservation, token, resources)
        feedback = FeedbackFile(feedback_file)
        _make_feedback_file(row, request, feedback)
        if warning := feedback_elsewhere(request.argv, feedback_file):
            log.warning("%s", warning)
        child = _launch(row, request, _child_env(request, taskid, feedback_file, token))
        leader = process.identity_of(child.pid)
        row.write(store.set_child, child.pid, leader and leader.create_time, child.pid)
        health = TaskState(taskid, request.heartbeat_timeout, request.expects_feedback)
        watch = _Watch(row, feedback, request.expects_feedback, wake, health, clock, monotonic)
        watch.state.start(monotonic())
        try:
            _supervise(child, inbox, watch)
        finally:  # whatever went wrong, none of the task's processes outlive supervision
            stopped = _stop_everything(child, leader, watch, request.grace)
            release(watch.state)
        ended_at = clock()
        # Still inside the inbox: a stop or kill request that comes now, too late to matter,
        # must not kill twrun before the end it saw is recorded.
        end = end_of_task(taskid, watch.stop, child.returncode, _last_signal(stopped, watch))
        final, incomplete = feedback.final() if request.expects_feedback else (None, None)
        notes = _denied(stopped)
        if incomplete:
            notes.append(f"final feedback incomplete: {incomplete}")
        end = dataclasses.replace(end, endtime=ended_at, termerror=_noted(end.termerror, notes))
        row.archive(end, final)  # when this fails the feedback file stays: all that is left
    if not request.keep_feedback:
        feedback.remove()
    return end


def _last_signal(stopped: process.StopResult | None, watch: _Watch) -> str | None:
    """The signal history names for a task stopped on purpose; None for one that just ended."""
    return stopped.last_signal if stopped is not None and watch.stop is not None else None


def _denied(stopped: process.StopResult | None) -> list[str]:
    """The processes of the task that could not be stopped, said once and kept for history."""
    if stopped is None or not stopped.denied:
        return []
    note = f"could not stop pid {', '.join(map(str, stopped.denied))} (permission denied)"
    log.warning("%s", note)
    return [note]


def _noted(termerror: str | None, notes: list[str]) -> str | None:
    """termerror with what else history should know of the end, after a semicolon."""
    return "; ".join([termerror, *notes] if termerror else notes) or None


class _Reservation(NamedTuple):
    """The reservation a run claims: its id, the task's name, and whether twrun made it."""

    taskid: int
    name: str
    made_here: bool


def _find_reservation(store: Store, request: LaunchRequest) -> _Reservation:
    """The reserved id to run under, or a fresh one for a task without feedback."""
    name = request.name or _default_name(request.argv)
    if request.taskid is None:
        if request.expects_feedback:
            raise ReservationRequired(
                "this task writes feedback: reserve a task id first (twctl reserve) "
                "and pass it with --taskid"
            )
        taskid = store.reserve(name, info1=request.info1, info2=request.info2, info3=request.info3)
        return _Reservation(taskid, name, made_here=True)
    row = store.get_task(request.taskid)
    if row is None:
        history = store.history_of(request.taskid)
        if history is None:
            raise UnknownTask(f"task {request.taskid} is not reserved")
        raise NotReserved(f"task {request.taskid} has already ended ({history['outcome']})")
    if row["status"] != Status.RESERVED:
        raise NotReserved(f"task {request.taskid} is {row['status']}, not RESERVED")
    return _Reservation(request.taskid, request.name or row["name"] or name, made_here=False)


def _claim(
    store: Store,
    request: LaunchRequest,
    reservation: _Reservation,
    token: str,
    resources: ExitStack,
) -> tuple[TaskRow, Path, SignalInbox, WakeSocket]:
    """Everything before the launch that may fail, ending with the claim of the reservation.

    The signal inbox and the wake socket live in `resources` until the task is archived. A
    reservation twrun made itself is cancelled when this fails, so a run that launched
    nothing leaves nothing RESERVED behind; one the user made stays theirs to retry.
    """
    try:
        inbox = resources.enter_context(SignalInbox([*watched_stop_signals(), KILL_REQUEST_SIGNAL]))
        wake = resources.enter_context(WakeSocket(ownership.token_digest(token)))
        feedback_file = _feedback_folder(store, request) / feedback_name(reservation.taskid)
        row = TaskRow(store, reservation.taskid, process.identity_of(os.getpid()))
        process.become_subreaper()
        _claim_start(row, request, reservation.name, feedback_file, token)
    except BaseException as error:
        if reservation.made_here:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            _cancel_reservation(store, reservation.taskid, reason)
        if isinstance(error, OSError) and not isinstance(error, TaskwatcherError):
            raise SupervisorUnusable(f"cannot prepare the supervision: {error.strerror}") from None
        raise
    return row, feedback_file, inbox, wake


def _launch(row: TaskRow, request: LaunchRequest, env: dict[str, str]) -> subprocess.Popen:
    """Start the command; a command that cannot start is archived FAILED before raising.

    LaunchError says 126 or 127 for the command's own fault, 125 when twrun could not even
    fork (too many processes or descriptors).
    """
    try:
        return process.spawn(request.argv, env)
    except process.LaunchError as error:
        failure = error
    except OSError as error:
        failure = LaunchError(f"cannot start the command: {error.strerror}", SUPERVISOR_FAILED)
    end = TaskEnd(row.taskid, Status.FAILED, failure.exit_code, None, str(failure))
    archive(row.store, end, None)
    raise failure


def check_descriptors(limits: tuple[int, int] | None = None) -> None:
    """Refuse to start with too few free file descriptors, before anything is reserved.

    Short of them mid-way, a supervisor could neither watch its task nor record its end.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE) if limits is None else limits
    if soft == resource.RLIM_INFINITY:
        return
    used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    if soft - used < DESCRIPTORS_NEEDED:
        raise SupervisorUnusable(
            f"too few file descriptors: the limit (ulimit -n) is {soft} and {used} are open;"
            f" twrun needs {DESCRIPTORS_NEEDED} free"
        )


def _cancel_reservation(store: Store, taskid: int, reason: str) -> None:
    """Send twrun's own reservation to history as EXPIRED; failing to is only worth a warning."""
    try:
        store.cancel_reservation(taskid, f"twrun: {reason}")
    except (StoreError, UnknownTask, NotReserved) as error:
        log.warning("task %s: cannot cancel its reservation: %s", taskid, error)


def _feedback_folder(store: Store, request: LaunchRequest) -> Path:
    """The folder of the task's feedback file: given, or the one beside the database.

    The default folder is required only for a task that writes feedback: for one that does
    not it is made when it can be (its program may still use $TASKWATCHER_FEEDBACK), but a
    folder it never needs must not stop it.
    """
    if request.feedpath is not None:
        return given_folder(request.feedpath)
    try:
        return default_folder(default_feedpath(store.path))
    except FeedpathUnusable as error:
        if request.expects_feedback:
            raise
        log.info("%s (the task writes no feedback)", error)
        return default_feedpath(store.path)


def _make_feedback_file(row: TaskRow, request: LaunchRequest, feedback: FeedbackFile) -> None:
    """Create the file once the claim made the id ours, before anything is launched.

    Before the claim the file may be the live one of a twrun that won the same id. When it
    cannot be made, a task that writes feedback ends FAILED in history, with nothing launched.
    """
    try:
        feedback.create()
    except FeedpathUnusable as error:
        if not request.expects_feedback:
            log.info("%s (the task writes no feedback)", error)
            return
        end = TaskEnd(row.taskid, Status.FAILED, SUPERVISOR_FAILED, None, str(error))
        archive(row.store, end, None)
        raise


def _default_name(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "task"


def _child_env(
    request: LaunchRequest, taskid: int, feedback_file: Path, token: str
) -> dict[str, str]:
    """The parent's environment plus where and how often the task should report.

    The token is how every process of the task is recognised later, even after a crash of
    this supervisor (see `ownership`).
    """
    env = dict(os.environ)
    env[ownership.TOKEN_VARIABLE] = token
    env["TASKWATCHER_TASKID"] = str(taskid)
    env["TASKWATCHER_FEEDBACK"] = str(feedback_file)
    timeout = request.heartbeat_timeout
    env["TASKWATCHER_TIMEOUT"] = f"{timeout:g}" if timeout else "0"
    return env


def _claim_start(
    row: TaskRow, request: LaunchRequest, name: str, feedback_file: Path, token: str
) -> None:
    """Mark the reservation RUNNING under this supervisor before anything is launched.

    Claiming first means a supervisor that dies between launch and record still leaves a
    row naming it, which housekeeping archives as LOST; and a refused claim (reservation
    taken meanwhile, database unwritable) launches nothing at all.
    """
    row.store.start(
        row.taskid,
        name=name,
        info1=request.info1,
        info2=request.info2,
        info3=request.info3,
        supervisor_pid=row.supervisor.pid,
        supervisor_ctime=row.supervisor.create_time,
        host=socket.gethostname(),
        timeout=request.heartbeat_timeout,
        has_feedback=request.expects_feedback,
        feedpath=str(feedback_file),
        command=list(request.argv),
        token_hash=ownership.token_digest(token),
        uid=os.geteuid(),
    )


def _supervise(child: subprocess.Popen, inbox: SignalInbox, watch: _Watch) -> None:
    """Poll until the child exits or a reason to stop it appears (timeout, signal, request).

    After a wake-up datagram the socket is left unpolled for WAKE_PAUSE: a flood of them
    (any local user may send some) costs at most a few looks a second.
    """
    poller = select.poll()
    muted_until: float | None = None
    with process.ChildWatch(child) as child_watch:
        poller.register(child_watch, select.POLLIN)
        poller.register(inbox.fileno, select.POLLIN)
        poller.register(watch.wake, select.POLLIN)
        while watch.stop is None:
            now = watch.monotonic()
            if muted_until is not None and now >= muted_until:
                poller.register(watch.wake, select.POLLIN)
                muted_until = None
            deadline = watch.state.next_deadline(now)
            wait = HEARTBEAT_CHECK_INTERVAL if deadline is None else deadline - now
            if muted_until is not None:
                wait = min(wait, muted_until - now)
            poller.poll(max(0, min(wait, HEARTBEAT_CHECK_INTERVAL)) * 1000)
            if child.poll() is not None:
                return
            process.reap_adopted(keep={child.pid})
            if muted_until is None and watch.wake.drain():
                watch.last_request_check = None  # read the kill request now
                poller.unregister(watch.wake)
                muted_until = watch.monotonic() + WAKE_PAUSE
            _read_signals(inbox, watch)
            _grade_heartbeat(watch)
            _check_kill_request(watch)


def _read_signals(inbox: SignalInbox, watch: _Watch) -> None:
    for signum in inbox.drain():
        if signum == KILL_REQUEST_SIGNAL:
            watch.last_request_check = None
        elif watch.stop is None:
            watch.stop = StopReason.by_signal(signum)


def _grade_heartbeat(watch: _Watch) -> None:
    """Move the health state from the file's mtime; write the row only when something changed.

    The file is read when it changed, and its values published with the heartbeat, at most
    once per HEARTBEAT_CHECK_INTERVAL.
    """
    now = watch.monotonic()
    since_last_look = HEARTBEAT_CHECK_INTERVAL if watch.last_look is None else now - watch.last_look
    watch.last_look = now
    mtime = watch.feedback.mtime()  # a missing or deleted file is no heartbeat
    previous = watch.state.state
    if mtime is not None and mtime != watch.heartbeat:
        watch.heartbeat = mtime
        watch.state.heartbeat(heartbeat_on_monotonic(mtime, watch.wall(), now, since_last_look))
    if watch.reads_feedback and (values := watch.feedback.changes(watch.wall())) is not None:
        watch.unpublished = values
    watch.state.tick(now)
    if watch.state.state == Status.TIMEOUT:
        watch.stop = StopReason.timeout(watch.state.timeout)
        return
    store = watch.row.store
    if watch.state.state != previous:
        watch.row.write(store.set_status, watch.state.state)
    due = watch.last_write is None or now - watch.last_write >= HEARTBEAT_CHECK_INTERVAL
    news = watch.heartbeat != watch.heartbeat_recorded or watch.unpublished is not None
    if watch.heartbeat is not None and news and due:
        watch.row.write(store.record_heartbeat, watch.heartbeat, watch.unpublished)
        watch.heartbeat_recorded = watch.heartbeat
        watch.last_write = now
        watch.unpublished = None


def _check_kill_request(watch: _Watch) -> None:
    """Read the kill-request column: at once after SIGUSR1, else once a second."""
    now = watch.monotonic()
    last = watch.last_request_check
    if watch.stop is not None or (last is not None and now - last < HEARTBEAT_CHECK_INTERVAL):
        return
    watch.last_request_check = now
    row = watch.row.current()
    if row and row.get("kill_request"):
        watch.stop = StopReason.requested(row["kill_request"])


def _stop_everything(
    child: subprocess.Popen, leader: process.ProcessIdentity | None, watch: _Watch, grace: float
) -> process.StopResult | None:
    """Stop the task when asked, and in every case leave none of its processes behind.

    Returns how stopping went, or None when nothing was left to stop.
    """
    stopped = None
    if leader is not None:
        first = watch.stop.first_signal if watch.stop else signal.SIGTERM
        if watch.stop is not None or process.remnants(leader, child.pid, adopter=os.getpid()):
            stopped = process.terminate_task(
                leader, child.pid, grace=grace, first=first, adopter=os.getpid()
            )
    child.wait()
    process.reap_adopted()
    return stopped
