"""`twrun`: run a command as a supervised task; exit with its status, timeout(1)-style."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from taskwatcher.cli import interruptible
from taskwatcher.cli.common import (
    add_db_option,
    fail,
    non_negative_seconds,
    open_store,
    setup_logging,
    task_id,
)
from taskwatcher.engine.errors import NotRecorded, ReservationRequired
from taskwatcher.engine.signals import KILL_REQUEST_SIGNAL
from taskwatcher.engine.stopping import SUPERVISOR_FAILED
from taskwatcher.engine.supervisor import DEFAULT_GRACE, LaunchRequest, run_task
from taskwatcher.grammar.errors import TaskwatcherError

EPILOG = """\
exit status: the command's own status; 124 no heartbeat within --timeout;
128+N the command ended by signal N; 125 twrun failed (reservation, database,
options); 126 command not executable; 127 command not found.

example:
  id=$(twctl reserve --name nightly --unique)
  twrun --taskid "$id" --feedpath . --timeout 30 -- ./nightly.py --feedback feedback_$id.log
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with twrun's own status, 125, like timeout(1)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        fail(f"{self.prog}: {message}", SUPERVISOR_FAILED)


def build_parser() -> argparse.ArgumentParser:
    """The twrun command line; the command to run follows `--`."""
    parser = _Parser(
        prog="twrun",
        description="Run COMMAND as a supervised taskwatcher task.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_db_option(parser)
    parser.add_argument("--taskid", type=task_id, help="reserved task id (required with feedback)")
    parser.add_argument("--name", help="task name (default: the command's base name)")
    for field in ("info1", "info2", "info3"):
        parser.add_argument(f"--{field}", metavar="TEXT", help="free text kept with the task")
    parser.add_argument("--feedpath", type=Path, metavar="DIR", help="folder of feedback_ID.log")
    parser.add_argument(
        "--timeout",
        type=non_negative_seconds,
        metavar="SECONDS",
        help="kill the task when its feedback file is not updated for this long (0: never)",
    )
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
    parser.add_argument("-v", "--debug", action="count", default=0, help="more logging")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    return parser


@interruptible
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `twrun` console script."""
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("twrun: no command given (twrun [OPTIONS] -- COMMAND [ARG...])", SUPERVISOR_FAILED)
    setup_logging("twrun", args.debug)
    request = LaunchRequest(
        argv=command,
        taskid=args.taskid,
        name=args.name,
        info1=args.info1,
        info2=args.info2,
        info3=args.info3,
        feedpath=args.feedpath,
        timeout=args.timeout,
        grace=args.grace,
        keep_feedback=args.keep_feedback,
    )
    if request.timeout and not request.expects_feedback:
        print(
            "twrun: --timeout ignored: the task writes no feedback "
            "(give --feedpath, or --feedback to the command)",
            file=sys.stderr,
        )
    # Outside supervision a kill request has nothing to stop, and its default action would
    # kill twrun: a late `twctl kill` must not turn the child's exit status into 138.
    signal.signal(KILL_REQUEST_SIGNAL, signal.SIG_IGN)
    try:
        with open_store(args.db) as store:
            end = run_task(store, request)
    except NotRecorded as error:
        fail(f"twrun: {error}", SUPERVISOR_FAILED)
    except ReservationRequired as error:
        fail(f"twrun: {error} (twctl reserve, then --taskid ID)", SUPERVISOR_FAILED)
    except TaskwatcherError as error:
        code = getattr(error, "exit_code", SUPERVISOR_FAILED)
        fail(f"twrun: {error}", code)
    except OSError as error:  # the system refused twrun itself something (no task runs)
        fail(f"twrun: {error.strerror or error}", SUPERVISOR_FAILED)
    return end.exit_code


if __name__ == "__main__":
    sys.exit(main())
