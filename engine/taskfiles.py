"""The files twrun keeps for a task: its feedback file and its log, made before the launch.

Both live in folders no other user can redirect (see `safepath`), beside the database unless
named. A task that cannot do without its feedback file is refused when it cannot have one;
any other task then runs without one, and is not told a path it must not use.
"""

from __future__ import annotations

from pathlib import Path

from taskwatcher.engine.capture import Capture, OutputMode
from taskwatcher.engine.errors import FeedpathUnusable
from taskwatcher.engine.feedbackfile import FeedbackFile, default_folder, given_folder
from taskwatcher.engine.lazylog import get_logger
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.location import default_feedpath, default_logdir
from taskwatcher.engine.output import LogFile
from taskwatcher.engine.request import LaunchRequest
from taskwatcher.engine.stopping import SUPERVISOR_FAILED, TaskEnd
from taskwatcher.engine.store import Store
from taskwatcher.engine.taskrow import TaskRow

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

log = get_logger(__name__)


def feedback_folder(store: Store, request: LaunchRequest) -> Path | None:
    """The folder of the task's feedback file: given, or the one beside the database; None
    when the default one is unusable and the task can do without it."""
    if request.feedpath is not None:
        return given_folder(request.feedpath)
    try:
        return default_folder(default_feedpath(store.location, on_server=store.many_hosts))
    except FeedpathUnusable as error:
        if request.needs_feedback_file:
            raise
        log.warning("%s; the task runs without a feedback file", error)
        return None


def log_folder(store: Store, request: LaunchRequest) -> Path | None:
    """The folder of the task's log: given, or the one beside the database; None uncaptured."""
    if not request.captures:
        return None
    return default_folder(
        request.logdir or default_logdir(store.location, on_server=store.many_hosts), kind="log"
    )


def make_feedback_file(
    row: TaskRow, request: LaunchRequest, path: Path | None
) -> FeedbackFile | None:
    """Create the file once the claim made the id ours, before anything is launched; None
    when the task goes without one.

    Before the claim the file may be the live one of a twrun that won the same id. When it
    cannot be made, a task that needs it ends FAILED in history, with nothing launched.
    """
    if path is None:
        return None
    feedback = FeedbackFile(path)
    try:
        feedback.create()
    except FeedpathUnusable as error:
        if not request.needs_feedback_file:
            log.warning("%s; the task runs without a feedback file", error)
            return None
        _fail(row, error)
    return feedback


def make_log(
    row: TaskRow, request: LaunchRequest, path: Path | None, earlier: LogFile | None = None
) -> Capture | None:
    """Create the log once the claim made the id ours, or carry on the file of the `earlier`
    attempt (a new LogFile each time: a writer of the earlier one may still hold its own);
    when that fails the task ends FAILED in history with nothing launched. None when the
    output is not captured."""
    if path is None:
        return None
    logfile = LogFile(path, request.log_max_bytes)
    try:
        if earlier is None:
            logfile.create()
        else:
            logfile.carry_on(earlier.identity)
    except FeedpathUnusable as error:
        _fail(row, error)
    return Capture(logfile, tee=request.output == OutputMode.TEE)


def _fail(row: TaskRow, error: FeedpathUnusable) -> NoReturn:
    """End the claimed task FAILED for a file it could not have, then raise the reason."""
    row.archive(TaskEnd(row.taskid, Status.FAILED, SUPERVISOR_FAILED, None, str(error)), None)
    raise error
