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
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from taskwatcher.engine import process
from taskwatcher.engine.control import read_feedback
from taskwatcher.engine.errors import NotReserved, StoreError, UnknownTask
from taskwatcher.engine.location import default_feedpath
from taskwatcher.engine.machine import Status, TaskState, release
from taskwatcher.engine.signals import KILL_REQUEST_SIGNAL, SignalInbox, watched_stop_signals
from taskwatcher.engine.stopping import SUPERVISOR_FAILED, StopReason, TaskEnd, end_of_task
from taskwatcher.engine.store import Store
from taskwatcher.engine.taskrow import TaskRow, archive
from taskwatcher.grammar.errors import TaskwatcherError

log = logging.getLogger(__name__)

#: Seconds between SIGTERM and SIGKILL when a task is stopped (supervisord's stopwaitsecs idea).
DEFAULT_GRACE = 5.0
#: The feedback file's mtime is read at least this often; also the cap on heartbeat row writes.
HEARTBEAT_CHECK_INTERVAL = 1.0
#: The argv marker by which the spec recognises a program that writes feedback.
FEEDBACK_FLAG = "--feedback"


class ReservationRequired(TaskwatcherError):
    """A task that writes feedback must be launched with a reserved --taskid."""


class FeedpathMissing(TaskwatcherError, FileNotFoundError):
    """The --feedpath folder does not exist."""


class FeedpathUnusable(TaskwatcherError):
    """The feedback folder cannot be created, or a leftover feedback file cannot be removed."""


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
    feedback_file: Path
    state: TaskState
    wall: Callable[[], float]
    monotonic: Callable[[], float]
    heartbeat: float | None = None  # the last mtime seen, unix seconds
    heartbeat_written: float | None = None
    last_request_check: float | None = None
    stop: StopReason | None = None


def heartbeat_on_monotonic(mtime: float, wall_now: float, mono_now: float) -> float:
    """Place a newly seen feedback mtime on the monotonic timeline the deadlines use.

    The file is stat'ed at least once per HEARTBEAT_CHECK_INTERVAL, so a genuine new write is
    at most that old when first seen; clamping its apparent age to that bounds what a step of
    the wall clock or an mtime in the future can do: neither kills nor shields a task.
    """
    age = min(max(wall_now - mtime, 0.0), HEARTBEAT_CHECK_INTERVAL)
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
    reservation = _find_reservation(store, request)
    taskid = reservation.taskid
    with SignalInbox([*watched_stop_signals(), KILL_REQUEST_SIGNAL]) as inbox:
        row, feedback_file = _claim(store, request, reservation)
        if request.expects_feedback:
            _clear_leftover(row, feedback_file)
        if warning := feedback_elsewhere(request.argv, feedback_file):
            log.warning("%s", warning)
        try:
            child = process.spawn(request.argv, _child_env(request, taskid, feedback_file))
        except process.LaunchError as error:
            archive(store, TaskEnd(taskid, Status.FAILED, error.exit_code, None, str(error)), None)
            raise
        leader = process.identity_of(child.pid)
        row.write(store.set_child, child.pid, leader and leader.create_time, child.pid)
        health = TaskState(taskid, request.heartbeat_timeout, request.expects_feedback)
        watch = _Watch(row, feedback_file, health, clock, monotonic)
        watch.state.start(monotonic())
        try:
            _supervise(child, inbox, watch)
        finally:  # whatever went wrong, none of the task's processes outlive supervision
            last_signal = _stop_everything(child, leader, watch, request.grace)
            release(watch.state)
        ended_at = clock()
        # Still inside the inbox: a stop or kill request that comes now, too late to matter,
        # must not kill twrun before the end it saw is recorded.
        end = end_of_task(taskid, watch.stop, child.returncode, last_signal)
        end = dataclasses.replace(end, endtime=ended_at)
        feedback = _final_feedback(row, feedback_file) if request.expects_feedback else None
        row.archive(end, feedback)  # when this fails the feedback file stays: all that is left
    if not request.keep_feedback:
        _remove(feedback_file)
    return end


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


def _claim(store: Store, request: LaunchRequest, reservation: _Reservation) -> tuple[TaskRow, Path]:
    """Everything before the launch that may fail, ending with the claim of the reservation.

    A reservation twrun made itself is cancelled when this fails, so a run that launched
    nothing leaves nothing RESERVED behind; one the user made stays theirs to retry.
    """
    try:
        feedback_file = _feedback_file(store, request, reservation.taskid)
        row = TaskRow(store, reservation.taskid, process.identity_of(os.getpid()))
        process.become_subreaper()
        _claim_start(row, request, reservation.name, feedback_file)
    except BaseException as error:
        if reservation.made_here:
            _cancel_reservation(store, reservation.taskid, str(error) or type(error).__name__)
        raise
    return row, feedback_file


def _cancel_reservation(store: Store, taskid: int, reason: str) -> None:
    """Send twrun's own reservation to history as EXPIRED; failing to is only worth a warning."""
    try:
        store.cancel_reservation(taskid, f"twrun: {reason}")
    except (StoreError, UnknownTask, NotReserved) as error:
        log.warning("task %s: cannot cancel its reservation: %s", taskid, error)


def _feedback_file(store: Store, request: LaunchRequest, taskid: int) -> Path:
    """`FEEDPATH/feedback_<taskid>.log`: the only path twrun derives, from an integer id.

    The default folder is required only for a task that writes feedback: for one that does
    not it is made when it can be (its program may still use $TASKWATCHER_FEEDBACK), but a
    folder it never needs must not stop it.
    """
    if request.feedpath is not None:
        folder = request.feedpath.absolute()
        if not folder.is_dir():
            raise FeedpathMissing(f"feedback folder {folder} does not exist")
        return folder / f"feedback_{int(taskid)}.log"
    folder = default_feedpath(store.path)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        message = f"cannot create the feedback folder {folder}: {error.strerror}"
        if request.expects_feedback:
            raise FeedpathUnusable(message) from None
        log.info("%s (the task writes no feedback)", message)
    return folder / f"feedback_{int(taskid)}.log"


def _clear_leftover(row: TaskRow, feedback_file: Path) -> None:
    """Remove an old file that would pose as a heartbeat, once the claim made the id ours.

    Before the claim the file may be the live one of a twrun that won the same id. When it
    cannot be removed the claimed task ends FAILED in history, with nothing launched.
    """
    try:
        feedback_file.unlink(missing_ok=True)
    except OSError as error:
        reason = f"cannot remove the old feedback file {feedback_file}: {error.strerror}"
        archive(
            row.store, TaskEnd(row.taskid, Status.FAILED, SUPERVISOR_FAILED, None, reason), None
        )
        raise FeedpathUnusable(reason) from None


def feedback_elsewhere(argv: Sequence[str], feedback_file: Path) -> str | None:
    """The warning for a command told (`--feedback X`) to write where twrun does not look.

    Such a task is healthy but times out. Only an X named like the watched file counts: a
    value of another name may be no path at all (`--feedback` is also a bare marker). X is
    compared by path arithmetic against the working directory only: a path from the command
    line never reaches the filesystem.
    """
    target = _feedback_argument(argv)
    if not target or Path(target).name != feedback_file.name:
        return None
    written = Path(target).absolute()
    if written == feedback_file.absolute():
        return None
    return (
        f"the command writes its feedback to {target}, but twrun watches {feedback_file}: "
        f"pass --feedpath {written.parent} or have it write to $TASKWATCHER_FEEDBACK"
    )


def _feedback_argument(argv: Sequence[str]) -> str | None:
    """X of the first `--feedback X` or `--feedback=X`; None for a bare flag."""
    for index, arg in enumerate(argv):
        if arg.startswith(FEEDBACK_FLAG + "="):
            return arg.removeprefix(FEEDBACK_FLAG + "=")
        if arg == FEEDBACK_FLAG:
            following = argv[index + 1] if index + 1 < len(argv) else ""
            return None if following.startswith("-") else following
    return None


def _remove(feedback_file: Path) -> None:
    """Tidy up after the task; failing to is worth a warning, not a failed task."""
    try:
        feedback_file.unlink()
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing to remove; a task without feedback may not even have the folder
    except OSError as error:
        log.warning("cannot remove the feedback file %s: %s", feedback_file, error.strerror)


def _default_name(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "task"


def _child_env(request: LaunchRequest, taskid: int, feedback_file: Path) -> dict[str, str]:
    """The parent's environment plus where and how often the task should report."""
    env = dict(os.environ)
    env["TASKWATCHER_TASKID"] = str(taskid)
    env["TASKWATCHER_FEEDBACK"] = str(feedback_file)
    timeout = request.heartbeat_timeout
    env["TASKWATCHER_TIMEOUT"] = f"{timeout:g}" if timeout else "0"
    return env


def _claim_start(row: TaskRow, request: LaunchRequest, name: str, feedback_file: Path) -> None:
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
    )


def _supervise(child: subprocess.Popen, inbox: SignalInbox, watch: _Watch) -> None:
    """Poll until the child exits or a reason to stop it appears (timeout, signal, request)."""
    poller = select.poll()
    with process.ChildWatch(child) as child_watch:
        poller.register(child_watch, select.POLLIN)
        poller.register(inbox.fileno, select.POLLIN)
        while watch.stop is None:
            now = watch.monotonic()
            deadline = watch.state.next_deadline(now)
            wait = HEARTBEAT_CHECK_INTERVAL if deadline is None else deadline - now
            poller.poll(max(0, min(wait, HEARTBEAT_CHECK_INTERVAL)) * 1000)
            if child.poll() is not None:
                return
            process.reap_adopted(keep={child.pid})
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
    """Move the health state from the file's mtime; write the row only when something changed."""
    try:
        mtime = os.stat(watch.feedback_file).st_mtime
    except OSError:
        mtime = None  # a missing or deleted file is no heartbeat
    previous = watch.state.state
    now = watch.monotonic()
    if mtime is not None and mtime != watch.heartbeat:
        watch.heartbeat = mtime
        watch.state.heartbeat(heartbeat_on_monotonic(mtime, watch.wall(), now))
    watch.state.tick(now)
    if watch.state.state == Status.TIMEOUT:
        watch.stop = StopReason.timeout(watch.state.timeout)
        return
    store = watch.row.store
    if watch.state.state != previous:
        watch.row.write(store.set_status, watch.state.state)
    due = (
        watch.heartbeat_written is None or now - watch.heartbeat_written >= HEARTBEAT_CHECK_INTERVAL
    )
    if watch.heartbeat is not None and watch.heartbeat != watch.heartbeat_written and due:
        watch.row.write(store.record_heartbeat, watch.heartbeat)
        watch.heartbeat_written = now


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


def _stop_everything(child, leader, watch: _Watch, grace: float) -> str | None:
    """Stop the task when asked, and in every case leave none of its processes behind."""
    last_signal = None
    if leader is not None:
        first = watch.stop.first_signal if watch.stop else signal.SIGTERM
        if watch.stop is not None or process.remnants(leader, child.pid, adopter=os.getpid()):
            last_signal = process.terminate_task(
                leader, child.pid, grace=grace, first=first, adopter=os.getpid()
            )
    child.wait()
    process.reap_adopted()
    return last_signal if watch.stop else None


def _final_feedback(row: TaskRow, feedback_file: Path) -> dict[str, str]:
    """The feedback as the file stood at the end, continuing from twctl's saved reader state.

    Without a saved state (none yet, or the row is no longer ours) the whole file is read.
    """
    saved_state = None
    if row.current() is not None:
        with suppress(StoreError, UnknownTask):
            _, saved_state = row.store.load_feedback(row.taskid)
    values, _ = read_feedback(feedback_file, saved_state, final=True)
    return values
