"""`twrun`: run a command as a supervised task; exit with its status, timeout(1)-style."""

from __future__ import annotations

import argparse
import functools
import math
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from taskwatcher.cli import interruptible
from taskwatcher.cli.common import (
    add_db_option,
    add_debug_option,
    byte_count,
    count,
    fail,
    non_negative_seconds,
    open_store,
    positive_seconds,
    setup_logging,
    task_id,
)
from taskwatcher.cli.helpformat import RawDescriptionHelpFormatter, add_version_option
from taskwatcher.cli.start import dump_modules
from taskwatcher.engine.capture import OutputMode
from taskwatcher.engine.errors import InvalidRequest, LaunchError, NotRecorded
from taskwatcher.engine.hooks import (
    DEFAULT_HOOK_TIMEOUT,
    Hook,
    hooks_from_options,
    note_in_log,
    run_hooks,
)
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.output import DEFAULT_LOG_MAX_BYTES
from taskwatcher.engine.request import DEFAULT_GRACE, DEFAULT_HEARTBEAT, Heartbeat, LaunchRequest
from taskwatcher.engine.retries import (
    DEFAULT_RETRY_DELAY,
    DEFAULT_RETRY_ON,
    MAX_BACKOFF,
    RETRYABLE,
    RetryPolicy,
)
from taskwatcher.engine.signals import KILL_REQUEST_SIGNAL
from taskwatcher.engine.stopping import SUPERVISOR_FAILED, TaskEnd
from taskwatcher.engine.store import Store
from taskwatcher.engine.supervisor import run_task
from taskwatcher.grammar.errors import TaskwatcherError

EPILOG = """\
exit status: the command's own status; 124 no heartbeat within --timeout, or
--max-runtime reached; 128+N the command ended by signal N; 125 twrun failed
(reservation, database, options); 126 command not executable; 127 command not found.

output: captured through pipes, so most programs buffer it (C stdio and Python
flush every few KiB, not every line): run Python with PYTHONUNBUFFERED=1, other
programs with `stdbuf -oL`, when their output must show (or be a heartbeat) at once.

examples:
  twrun --name nightly --timeout 30 -- ./nightly.py      # writes to $TASKWATCHER_FEEDBACK
  twrun --retries 3 --retry-delay 10 --retry-backoff -- ./fetch.sh   # 10, 20, 40 s apart
  id=$(twctl reserve --name nightly --unique)
  twrun --taskid "$id" --feedpath . --timeout 30 -- ./nightly.py --feedback feedback_$id.log
"""


def retry_outcomes(text: str) -> frozenset[Status]:
    """argparse type: the outcomes of an attempt that are retried, such as `failed,timeout`."""
    words = [word.strip().upper() for word in text.split(",") if word.strip()]
    known = ", ".join(status.lower() for status in RETRYABLE)
    if not words or not set(words) <= set(RETRYABLE):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {known}")
    return frozenset(Status(word) for word in words)


def backoff_factor(text: str) -> float:
    """argparse type: what each delay between attempts is multiplied by, 1 or more."""
    try:
        factor = float(text)
    except ValueError:
        factor = math.nan
    if not 1 <= factor <= MAX_BACKOFF:
        raise argparse.ArgumentTypeError(f"not a factor from 1 to {MAX_BACKOFF:g}: {text!r}")
    return factor


def heartbeat_sources(text: str) -> frozenset[Heartbeat]:
    """argparse type: a comma-separated list of heartbeat sources, such as `feedback,output`."""
    words = [word.strip() for word in text.split(",") if word.strip()]
    known = ", ".join(source.value for source in Heartbeat)
    try:
        sources = frozenset(Heartbeat(word) for word in words)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {known}") from None
    if not sources:
        raise argparse.ArgumentTypeError(f"name at least one of {known}")
    return sources


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with twrun's own status, 125, like timeout(1)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        fail(f"{self.prog}: {message}", SUPERVISOR_FAILED)


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The twrun command line; the command to run follows `--`. Built once per process
    (the command server builds it before it forks its workers)."""
    parser = _Parser(
        prog="twrun",
        description="Run COMMAND as a supervised taskwatcher task.",
        epilog=EPILOG,
        formatter_class=RawDescriptionHelpFormatter,
    )
    add_db_option(parser)
    parser.add_argument("--taskid", type=task_id, help="a reserved task id (default: reserve one)")
    parser.add_argument("--name", "--taskname", help="task name (default: the command's base name)")
    parser.add_argument(
        "--unique", action="store_true", help="reserve --name so no other live task holds it"
    )
    for field in ("info1", "info2", "info3"):
        parser.add_argument(f"--{field}", metavar="TEXT", help="free text kept with the task")
    parser.add_argument("--feedpath", type=Path, metavar="DIR", help="folder of feedback_ID.log")
    parser.add_argument(
        "--timeout",
        type=non_negative_seconds,
        metavar="SECONDS",
        help="kill the task when it gives no heartbeat for this long (0: never)",
    )
    parser.add_argument(
        "--heartbeat",
        type=heartbeat_sources,
        default=DEFAULT_HEARTBEAT,
        metavar="LIST",
        help="what counts as a heartbeat, comma-separated: feedback (its file changes), "
        "output (any byte on stdout or stderr), notify (sd_notify WATCHDOG=1) "
        "(default: feedback,notify)",
    )
    parser.add_argument(
        "--max-runtime",
        type=non_negative_seconds,
        metavar="SECONDS",
        help="kill the task after this long whatever its heartbeats (0: never)",
    )
    _add_output_options(parser)
    parser.add_argument(
        "--grace",
        type=non_negative_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"wait between SIGTERM and SIGKILL (default {DEFAULT_GRACE:g})",
    )
    parser.add_argument(
        "--keep-feedback", action="store_true", help="leave the feedback file after the end"
    )
    _add_retry_options(parser)
    _add_hook_options(parser)
    add_debug_option(parser)
    add_version_option(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    return parser


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """--output, --logdir, --log-max-bytes: where the task's stdout and stderr go."""
    parser.add_argument(
        "--output",
        type=OutputMode,
        choices=list(OutputMode),
        default=OutputMode.TEE,
        help="tee: log the output and show it (default); log: log it only; "
        "inherit: neither, the task writes to twrun's own stdout and stderr",
    )
    parser.add_argument("--logdir", type=Path, metavar="DIR", help="folder of task_ID.log")
    parser.add_argument(
        "--log-max-bytes",
        type=byte_count,
        default=DEFAULT_LOG_MAX_BYTES,
        metavar="N",
        help="rotate the log once past N bytes (K, M, G suffixes; default 16M)",
    )


def _add_retry_options(parser: argparse.ArgumentParser) -> None:
    """--retries, --retry-delay, --retry-backoff, --retry-on: a failed task launched again."""
    parser.add_argument(
        "--retries",
        type=count,
        default=0,
        metavar="N",
        help="launch a task that failed again, up to N more times, under the same id",
    )
    parser.add_argument(
        "--retry-delay",
        type=non_negative_seconds,
        default=DEFAULT_RETRY_DELAY,
        metavar="SECONDS",
        help=f"wait between two attempts (default {DEFAULT_RETRY_DELAY:g})",
    )
    parser.add_argument(
        "--retry-backoff",
        type=backoff_factor,
        nargs="?",
        const=2.0,
        default=1.0,
        metavar="FACTOR",
        help="multiply the delay by FACTOR after each attempt (alone: 2; default 1)",
    )
    parser.add_argument(
        "--retry-on",
        type=retry_outcomes,
        default=DEFAULT_RETRY_ON,
        metavar="LIST",
        help="which ends are retried, comma-separated: failed, timeout, killed (by a signal "
        "nobody here sent; a kill asked for always ends the task) (default: failed,timeout)",
    )


def _add_hook_options(parser: argparse.ArgumentParser) -> None:
    """--on-exit, --on-failure, --hook-timeout: commands run once the task is archived."""
    parser.add_argument(
        "--on-exit",
        action="append",
        default=[],
        metavar="CMD",
        help="run CMD (split as a shell would, run without one) once the task has ended and "
        "been recorded (after its last attempt); repeatable",
    )
    parser.add_argument(
        "--on-failure",
        action="append",
        default=[],
        metavar="CMD",
        help="the same, only when the task did not end COMPLETED",
    )
    parser.add_argument(
        "--hook-timeout",
        type=positive_seconds,
        default=DEFAULT_HOOK_TIMEOUT,
        metavar="SECONDS",
        help=f"stop a hook still running after this long (default {DEFAULT_HOOK_TIMEOUT:g})",
    )


def _request(command: list[str], args: argparse.Namespace) -> LaunchRequest:
    """The launch request the options describe; InvalidRequest for options that clash."""
    return LaunchRequest(
        argv=command,
        taskid=args.taskid,
        name=args.name,
        unique=args.unique,
        info1=args.info1,
        info2=args.info2,
        info3=args.info3,
        feedpath=args.feedpath,
        timeout=args.timeout,
        max_runtime=args.max_runtime,
        grace=args.grace,
        keep_feedback=args.keep_feedback,
        heartbeat=args.heartbeat,
        output=args.output,
        logdir=args.logdir,
        log_max_bytes=args.log_max_bytes,
        retry=RetryPolicy(args.retries, args.retry_delay, args.retry_backoff, args.retry_on),
    )


@interruptible
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `twrun` console script."""
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("twrun: no command given (twrun [OPTIONS] -- COMMAND [ARG...])", SUPERVISOR_FAILED)
    setup_logging("twrun", args.debug)
    try:
        request = _request(command, args)
        hooks = hooks_from_options(args.on_exit, args.on_failure)
    except InvalidRequest as error:
        fail(f"twrun: {error}", SUPERVISOR_FAILED)
    # Outside supervision a kill request has nothing to stop, and its default action would
    # kill twrun: a late `twctl kill` must not turn the child's exit status into 138 (an
    # ignored signal, unlike a handled one, stays so through the interpreter's exit).
    signal.signal(KILL_REQUEST_SIGNAL, signal.SIG_IGN)
    # A supervisor waits for its children: a SIGCHLD its starter ignored would have the
    # system reap them unseen (the task inherits the default action, then).
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        with open_store(args.db) as store:
            end = _supervise(store, request, hooks, args)
    except NotRecorded as error:
        fail(f"twrun: {error}", SUPERVISOR_FAILED)
    except TaskwatcherError as error:
        code = getattr(error, "exit_code", SUPERVISOR_FAILED)
        fail(f"twrun: {error}", code)
    except OSError as error:  # the system refused twrun itself something (no task runs)
        fail(f"twrun: {error.strerror or error}", SUPERVISOR_FAILED)
    dump_modules()  # everything imported while supervising stays loaded to the end
    return end.exit_code


def _supervise(
    store: Store, request: LaunchRequest, hooks: list[Hook], args: argparse.Namespace
) -> TaskEnd:
    """Run the task, then its hooks once its end is recorded (a command that could not
    start is recorded FAILED: its hooks run too; an end not recorded runs none)."""
    try:
        end = run_task(store, request)
    except LaunchError as error:
        if error.taskid is not None:
            _run_hooks(store, error.taskid, hooks, args)
        raise
    _run_hooks(store, end.taskid, hooks, args)
    return end


def _run_hooks(store: Store, taskid: int, hooks: list[Hook], args: argparse.Namespace) -> None:
    if not hooks:
        return
    try:
        ended = store.history_of(taskid)
    except TaskwatcherError as error:
        _warn(f"hooks not run: the task's record cannot be read: {error}")
        return
    if ended is None or ended.outcome == Status.LOST:  # not an end this twrun saw
        return

    def warn(message: str) -> None:
        _warn(message)
        note_in_log(ended.logfile, f"twrun: {message}")

    try:
        run_hooks(hooks, ended, timeout=args.hook_timeout, grace=args.grace, warn=warn)
    except KeyboardInterrupt:  # the task's end stands, and so does its exit status
        warn("interrupted: the hook running was stopped and the others skipped")
    except OSError as error:  # no room for the feedback file, say: hooks are not the task
        warn(f"hooks not run: {error.strerror or error}")


def _warn(message: str) -> None:
    print(f"twrun: warning: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
