"""`twctl wait`: block until tasks have ended, and exit as their twrun did.

A script that launched tasks in the background (or that another script launched) gets their
ends as if it had run them itself: one line per task, and the exit status of `twrun`.
"""

from __future__ import annotations

import argparse
import math

from taskwatcher.cli import EXIT_FAILED, EXIT_USAGE
from taskwatcher.cli.common import fail, json_flag, non_negative_seconds, subcommand, task_id
from taskwatcher.cli.ended import ended_json
from taskwatcher.cli.render import cell, print_json
from taskwatcher.engine import control
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.records import Ended
from taskwatcher.engine.stopping import twrun_exit_code
from taskwatcher.engine.store import Store


def add_wait(sub) -> None:
    """Register `twctl wait ID... | --name NAME [--timeout SECONDS] [--json]`."""
    parser = subcommand(
        sub,
        "wait",
        _cmd_wait,
        "wait until tasks have ended; exit with the task's twrun status"
        " (several tasks: 0 if all COMPLETED, else 1; timed out: 1)",
        "twctl wait 12 13 --timeout 600",
    )
    parser.add_argument("taskids", nargs="*", type=task_id, metavar="ID", help="tasks to wait for")
    parser.add_argument(
        "--name", "--taskname", help="every task with this name live when wait starts"
    )
    parser.add_argument(
        "--timeout",
        type=non_negative_seconds,
        metavar="SECONDS",
        help="give up after this long, exit 1 naming the tasks still running (default: never)",
    )
    json_flag(parser)


def _cmd_wait(store: Store, args: argparse.Namespace) -> int:
    taskids = _targets(store, args)
    timeout = math.inf if args.timeout is None else args.timeout
    records = control.wait_ended(store, taskids, timeout)
    if args.json:
        print_json([ended_json(record) for record in records])
    else:
        for taskid, record in zip(taskids, records, strict=True):
            print(f"{taskid} {cell(record.outcome)} {twrun_exit_code(record)}")
    return _exit_status(records)


def _targets(store: Store, args: argparse.Namespace) -> list[int]:
    """The ids given (each once, in their order), or the live tasks of the name given."""
    if bool(args.taskids) == (args.name is not None):
        fail("twctl: wait takes either task ids or --name NAME", EXIT_USAGE)
    if args.name is None:
        return list(dict.fromkeys(args.taskids))
    taskids = control.tasks_named(store, args.name)
    if not taskids:
        fail(f"twctl: no live task named {args.name!r}", EXIT_FAILED)
    return taskids


def _exit_status(records: list[Ended]) -> int:
    """One task: its twrun exit status; several: 0 if every one COMPLETED, else 1."""
    if len(records) == 1:
        return twrun_exit_code(records[0])
    return 0 if all(record.outcome == Status.COMPLETED for record in records) else EXIT_FAILED
