"""Supervised execution: claim a reservation, launch the task, supervise it, archive it.

The supervision is a loop over event sources (`engine.loop`, `engine.sources`,
`engine.capture`): the child's exit, signals, wake-ups and the kill request, the task's output
pipes, the feedback file, the health clock and the maximum runtime. It sleeps in poll()
until the next event or deadline: an idle task costs, per second, a stat() of its feedback
file and one read of its row (the kill-request check that still works when `twctl kill`
cannot wake this process: another host, another namespace).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

from taskwatcher.engine import loop, ownership, process
from taskwatcher.engine.attempts import relaunch_after
from taskwatcher.engine.capture import Capture
from taskwatcher.engine.errors import (
    LaunchError,
    NotReserved,
    SupervisorUnusable,
    UnknownTask,
)
from taskwatcher.engine.exitstatus import SIGNAL_EXIT_BASE
from taskwatcher.engine.feedbackfile import (
    FeedbackFile,
    feedback_elsewhere,
    feedback_name,
)
from taskwatcher.engine.launch import check_descriptors
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.machine import TaskState
from taskwatcher.engine.notify import NotifySocket
from taskwatcher.engine.output import LogFile, log_name
from taskwatcher.engine.records import Launch
from taskwatcher.engine.request import Heartbeat, LaunchRequest
from taskwatcher.engine.running import listeners_of, stop_everything, supervise
from taskwatcher.engine.settings import host_id
from taskwatcher.engine.signals import KILL_REQUEST_SIGNAL, SignalInbox, watched_stop_signals
from taskwatcher.engine.stopping import SUPERVISOR_FAILED, StopReason, TaskEnd, end_of_task
from taskwatcher.engine.store import Store
from taskwatcher.engine.supervision import Recorder, Supervision
from taskwatcher.engine.taskfiles import feedback_folder, log_folder, make_feedback_file, make_log
from taskwatcher.engine.taskrow import TaskRow
from taskwatcher.engine.wakeup import WakeSocket
from taskwatcher.grammar.datatype import datatype, replace
from taskwatcher.grammar.errors import TaskwatcherError

log = get_logger(__name__)


def run_task(
    store: Store,
    request: LaunchRequest,
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> TaskEnd:
    """Launch the request's command as a supervised task and return how it ended: its last
    attempt's end, when a failed one is launched again (`request.retry`).

    Raises before launching anything when the reservation or the feedback folder is wrong,
    and LaunchError (with its 126/127 exit code) once a command that cannot start is archived
    as FAILED. Once the child runs, database trouble is logged and never leaves it unsupervised;
    NotRecorded at the end says the task ended but history could not be told.
    """
    check_descriptors()
    reservation = _find_reservation(store, request)
    token = ownership.new_token()
    with ExitStack() as resources:
        claimed = _claim(store, request, reservation, token, resources)
        attempt, logfile = 1, None
        while True:
            ran = _run_attempt(claimed, request, token, attempt, logfile, clock, monotonic)
            if ran.retry_in is None:
                end, feedback = ran.end, ran.feedback
                break
            if ran.feedback is not None and not request.keep_feedback:
                ran.feedback.remove()
            attempt, logfile = attempt + 1, ran.logfile
            row = claimed.row
            stop = relaunch_after(
                row, claimed.inbox, claimed.wake, ran.retry_in, request.heartbeat_timeout, monotonic
            )
            if stop is not None:
                end, feedback = _end_between(row, stop, attempt, ran.final, ran.tail), None
                break
    if feedback is not None and not request.keep_feedback:
        feedback.remove()
    return end


@datatype(frozen=True)
class _Ran:
    """One attempt, recorded: how it ended, and whether (in how long) another follows."""

    end: TaskEnd
    feedback: FeedbackFile | None
    final: dict[str, str] | None  # the feedback it ended with
    tail: str | None  # the end of its output
    logfile: LogFile | None
    retry_in: float | None  # None: the task was archived


def _run_attempt(
    claimed: _Claimed,
    request: LaunchRequest,
    token: str,
    attempt: int,
    logfile: LogFile | None,
    clock: Callable[[], float],
    monotonic: Callable[[], float],
) -> _Ran:
    """Launch the command once, supervise it to its end, and record that end: in history
    for good, or as one attempt of a task that is launched again."""
    row, taskid = claimed.row, claimed.row.taskid
    feedback = make_feedback_file(row, request, claimed.feedback_file)
    try:  # a task that never started leaves no feedback file behind
        capture = make_log(row, request, claimed.logfile, logfile)
        if capture is not None and attempt > 1:
            capture.note(f"attempt {attempt} of {request.retry.attempts}")
        warning = feedback and attempt == 1 and feedback_elsewhere(request.argv, feedback.path)
        if warning:
            log.warning("%s", warning)
        env = _child_env(request, taskid, feedback and feedback.path, token, attempt)
        env["NOTIFY_SOCKET"] = claimed.notify.address
        child, pipes = _launch(row, request, env)
    except BaseException:
        if feedback is not None and not request.keep_feedback:
            feedback.remove()
        raise
    leader = process.identity_of(child.pid)
    row.write(row.store.set_child, child.pid, leader and leader.create_time)
    health = TaskState(taskid, request.heartbeat_timeout)
    health.start(monotonic())
    state = Supervision(health, row, clock)
    recorder = Recorder(state)
    listeners = listeners_of(child, claimed.notify, recorder, request, capture, pipes, monotonic)
    try:
        supervise(
            child, claimed.inbox, claimed.wake, recorder, feedback, request, listeners, monotonic
        )
    finally:  # whatever went wrong, none of the task's processes outlive supervision
        quiet = listeners.while_stopping

        def idle(seconds: float) -> None:
            loop.run_for(quiet, seconds, monotonic)

        stopped = stop_everything(child, leader, state.stop, request.grace, idle)
        listeners.notifications.handle(monotonic())  # its last words
    # Still inside the inbox: a stop or kill request that comes now, too late to matter,
    # must not kill twrun before the end it saw is recorded.
    end, final, tail = _ending(child, recorder, stopped, feedback, capture, clock())
    policy = request.retry
    if policy.retries_end(end.outcome, state.stop and state.stop.outcome, attempt):
        delay = policy.delay_before(attempt + 1)
        if row.retry(end, final, tail, clock() + delay):
            log.warning(
                "task %s: attempt %s of %s ended %s (status %s); the next in %g s",
                taskid, attempt, policy.attempts, end.outcome, end.exit_code, delay,
            )  # fmt: skip
            return _Ran(end, feedback, final, tail, capture and capture.logfile, delay)
    row.archive(end, final, tail)
    return _Ran(end, feedback, final, tail, None, None)


def _end_between(
    row: TaskRow,
    stop: StopReason,
    attempt: int,
    feedback: dict[str, str] | None,
    tail: str | None,
) -> TaskEnd:
    """End, as `stop` says, a task between two attempts: its next one never started, and
    what the task last reported (the attempt before's feedback and output) is its record's.
    A kill exits as one of a running attempt would have (128 + the signal it would get)."""
    if stop.outcome == Status.KILLED:
        code = SIGNAL_EXIT_BASE + stop.first_signal
    else:
        code = SUPERVISOR_FAILED  # LOST: the lease ran out, or the row is gone
    reason = f"{stop.reason}, before attempt {attempt} started"
    end = TaskEnd(row.taskid, stop.outcome, code, None, reason)
    row.archive(end, feedback, tail)
    return end


def _ending(
    child: subprocess.Popen,
    recorder: Recorder,
    stopped: process.StopResult | None,
    feedback: FeedbackFile | None,
    capture: Capture | None,
    ended_at: float,
) -> tuple[TaskEnd, dict[str, str] | None, str | None]:
    """How the attempt ended, as history keeps it, with its final feedback and the end of
    its output. When recording fails the feedback file stays: all that is left of it."""
    state = recorder.state
    last_signal = stopped.last_signal if stopped is not None and state.stop else None
    end = end_of_task(state.row.taskid, state.stop, child.returncode, last_signal)
    tail = capture.finish() if capture is not None else None
    final, incomplete = feedback.final() if feedback is not None else (None, None)
    notes = _denied(stopped)
    if state.errno is not None and end.outcome == Status.FAILED:
        notes.append(f"errno {state.errno} ({os.strerror(state.errno)})")
    if incomplete:
        notes.append(f"final feedback incomplete: {incomplete}")
    if capture is not None and capture.incomplete:
        notes.append(f"log incomplete: {capture.incomplete}")
    end = replace(end, endtime=ended_at, termerror=_noted(end.termerror, notes))
    return end, recorder.final(final), tail


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


@datatype(frozen=True)
class _Reservation:
    """The reservation a run claims (None: the claim makes the task) and the task's name."""

    taskid: int | None
    name: str


def _find_reservation(store: Store, request: LaunchRequest) -> _Reservation:
    """The reserved id to run under; None when none was given."""
    name = request.name or _default_name(request.argv)
    if request.taskid is None:
        return _Reservation(None, name)
    task = store.get_task(request.taskid)
    if task is None:
        history = store.history_of(request.taskid)
        if history is None:
            raise UnknownTask(f"task {request.taskid} is not reserved")
        raise NotReserved(f"task {request.taskid} has already ended ({history.outcome})")
    if task.status != Status.RESERVED:
        raise NotReserved(f"task {request.taskid} is {task.status}, not RESERVED")
    return _Reservation(request.taskid, request.name or task.name or name)


@datatype(frozen=True)
class _Claimed:
    """What a claimed task is supervised with: its row, where its files go, its inboxes."""

    row: TaskRow
    feedback_file: Path | None
    logfile: Path | None
    inbox: SignalInbox
    wake: WakeSocket
    notify: NotifySocket


def _claim(
    store: Store,
    request: LaunchRequest,
    reservation: _Reservation,
    token: str,
    resources: ExitStack,
) -> _Claimed:
    """Everything before the launch that may fail, ending with the claim.

    The signal inbox and the wake socket live in `resources` until the task is archived.
    Given no reservation, twrun makes its task in the very write that claims it: a run that
    launched nothing leaves nothing behind; a reservation the user made stays theirs to retry.
    """
    digest = ownership.token_digest(token)
    try:
        inbox = resources.enter_context(SignalInbox([*watched_stop_signals(), KILL_REQUEST_SIGNAL]))
        wake = resources.enter_context(WakeSocket(digest))
        notify = resources.enter_context(NotifySocket())
        folders = feedback_folder(store, request), log_folder(store, request)
        process.become_subreaper()
        launch_of = _launch_record(request, reservation.name, folders, digest)
        taskid = reservation.taskid
        if taskid is None:
            taskid = store.start(reservation.name, launch_of, unique=request.unique)
        else:
            store.claim(taskid, launch_of(taskid))
    except OSError as error:
        if not isinstance(error, TaskwatcherError):
            raise SupervisorUnusable(f"cannot prepare the supervision: {error.strerror}") from None
        raise
    feedback_file, logfile = _task_files(folders, taskid)
    row = TaskRow(store, taskid, digest)
    return _Claimed(row, feedback_file, logfile, inbox, wake, notify)


def _task_files(
    folders: tuple[Path | None, Path | None], taskid: int
) -> tuple[Path | None, Path | None]:
    """The task's feedback file and log, named by its id, in their folders (None: none)."""
    feedback_folder, log_folder = folders
    return (
        None if feedback_folder is None else feedback_folder / feedback_name(taskid),
        None if log_folder is None else log_folder / log_name(taskid),
    )


def _launch(
    row: TaskRow, request: LaunchRequest, env: dict[str, str]
) -> tuple[subprocess.Popen, tuple[int, ...]]:
    """Start the command, with the read ends of its output pipes: none uncaptured, one for
    both streams when only logged (their order kept exactly), one each when teed. A
    command that cannot start is archived FAILED before raising.

    LaunchError says 126 or 127 for the command's own fault, 125 when twrun could not even
    fork (too many processes or descriptors).
    """
    try:
        return process.spawn(request.argv, env, pipes=request.output.pipes)
    except process.LaunchError as error:
        failure = error
    except OSError as error:
        failure = LaunchError(f"cannot start the command: {error.strerror}", SUPERVISOR_FAILED)
    row.archive(TaskEnd(row.taskid, Status.FAILED, failure.exit_code, None, str(failure)), None)
    failure.taskid = row.taskid
    raise failure


def _default_name(argv: Sequence[str]) -> str:
    return os.path.basename(argv[0]) if argv else "task"


def _child_env(
    request: LaunchRequest, taskid: int, feedback_file: Path | None, token: str, attempt: int
) -> dict[str, str]:
    """The parent's environment plus where and how often the task should report, and which
    attempt it is (1 unless retried) of how many.

    The token is how every process of the task is recognised later, even after a crash of
    this supervisor (see `ownership`).
    """
    env = dict(os.environ)
    env[ownership.TOKEN_VARIABLE] = token
    env["TASKWATCHER_TASKID"] = str(taskid)
    env["TASKWATCHER_ATTEMPT"] = str(attempt)
    env["TASKWATCHER_ATTEMPTS"] = str(request.retry.attempts)
    if feedback_file is not None:
        env["TASKWATCHER_FEEDBACK"] = str(feedback_file)
    else:  # not one inherited from an enclosing task either
        env.pop("TASKWATCHER_FEEDBACK", None)
    timeout = request.heartbeat_timeout
    env["TASKWATCHER_TIMEOUT"] = f"{timeout:g}" if timeout else "0"
    # As systemd gives a service its watchdog; nothing inherited from an enclosing one.
    env.pop("WATCHDOG_PID", None)
    if timeout and Heartbeat.NOTIFY in request.heartbeat:  # a watchdog that is watched
        env["WATCHDOG_USEC"] = str(round(timeout * 1e6))
    else:
        env.pop("WATCHDOG_USEC", None)
    return env


def _launch_record(
    request: LaunchRequest,
    name: str,
    folders: tuple[Path | None, Path | None],
    token_hash: str,
) -> Callable[[int], Launch]:
    """What the claim records of this supervisor and its launch, for the task's id (which
    names its files): the row is RUNNING under this supervisor before anything is launched.

    Claiming first means a supervisor that dies between launch and record still leaves a
    row naming it, which housekeeping archives as LOST; and a refused claim (reservation
    taken meanwhile, database unwritable) launches nothing at all.
    """
    supervisor = process.identity_of(os.getpid())
    assert supervisor is not None  # this very process
    host = host_id()

    def launch(taskid: int) -> Launch:
        feedback_file, logfile = _task_files(folders, taskid)
        return Launch(
            supervisor_pid=supervisor.pid,
            supervisor_ctime=supervisor.create_time,
            host=host,
            token_hash=token_hash,
            uid=os.geteuid(),
            command=list(request.argv),
            name=name,
            info1=request.info1,
            info2=request.info2,
            info3=request.info3,
            timeout=request.heartbeat_timeout,
            feedpath=None if feedback_file is None else str(feedback_file),
            logfile=None if logfile is None else str(logfile),
            attempts=request.retry.attempts,
        )

    return launch
