"""`twctl`: reserve, list, feedback, history, kill and watch supervised tasks."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterable, Sequence

from taskwatcher.cli import interruptible, waiting
from taskwatcher.cli.aliases import expand_aliases
from taskwatcher.cli.columns import HISTORY_COLUMNS, LIST_COLUMNS, attempt_of
from taskwatcher.cli.common import (
    SubcommandParser,
    add_db_option,
    add_debug_option,
    fail,
    json_flag,
    non_negative_seconds,
    open_store,
    positive_int,
    positive_seconds,
    setup_logging,
    subcommand,
    task_id,
)
from taskwatcher.cli.ended import ended_json, ended_line
from taskwatcher.cli.helpformat import HelpFormatter, add_version_option
from taskwatcher.cli.history import PAGE, HistoryWalk, terminal_page
from taskwatcher.cli.logs import add_log_commands, report_left_logs
from taskwatcher.cli.metrics import add_metrics
from taskwatcher.cli.render import (
    cell,
    escape,
    key_values,
    print_json,
    print_records,
    silence_stdout,
)
from taskwatcher.cli.timespec import parse_when
from taskwatcher.engine import control, housekeeping
from taskwatcher.engine.errors import InvalidRequest, LiveTasksExist, StoreError
from taskwatcher.engine.lifecycle import FINAL_STATUSES, LIVE_STATUSES, Status
from taskwatcher.engine.logs import LogSweep
from taskwatcher.engine.records import Ended
from taskwatcher.engine.settings import host_id
from taskwatcher.engine.store import Access, Store
from taskwatcher.grammar.errors import TaskwatcherError

EXIT_FAILED = 1
EXIT_USAGE = 2


#: Commands that skip the housekeeping every other command does first: `init` and `update`
#: decide for themselves, and `kill`/`killall` archive a target whose supervisor vanished on
#: their own, so they can report it LOST instead of finding it already gone.
NO_HOUSEKEEPING = {"init", "update", "kill", "killall"}
#: Commands that only read: they never create a database, and read one that cannot be
#: written here as it is, without housekeeping (`Access.READ`).
READ_ONLY = {"list", "history", "feedback", "show", "log", "follow", "wait", "watch", "metrics"}
#: Commands that may be a database's first use, and create it; every other one changes a
#: database that must exist already (`clear`, `kill`: there is nothing to clear or kill).
CREATING = {"init", "reserve"}


def _access(command: str) -> Access:
    """How `command` opens its database."""
    if command in READ_ONLY:
        return Access.READ
    return Access.CREATE if command in CREATING else Access.WRITE


#: Commands that need no database opened for them (`completion` opens one only to read task
#: ids, and only if it exists): their handler is called as handler(args).
WITHOUT_STORE = {"completion"}


def _cmd_init(store: Store, args: argparse.Namespace) -> int:
    try:
        if not args.force:
            control.refuse_live_tasks(store)  # before asking, not after a yes
        if _asks(args):  # the counts only for the question: a script is never asked
            losses = _counted(store.history_count(), "history row")
            if args.force:
                losses += _counted(store.live_count(), "live task")
            if losses:
                _confirm(f"recreate {escape(store.location)}, dropping {' and '.join(losses)}?")
        control.reinitialize(store, force=args.force)
    except LiveTasksExist as error:
        fail(f"twctl: {error}; use --force to drop them", EXIT_FAILED)
    print(f"initialized {escape(store.location)}")
    return 0


def _counted(count: int, noun: str) -> list[str]:
    """`["3 history row(s)"]`, or nothing for none: what a change would drop."""
    return [f"{count} {noun}(s)"] if count else []


def _asks(args: argparse.Namespace) -> bool:
    """Whether a command that drops data asks first: on a terminal, unless --yes. A script
    (stdin not a terminal) is not asked, so it runs as it always did."""
    return not args.yes and sys.stdin.isatty()


def _confirm(question: str) -> None:
    """Ask before dropping what cannot come back; any answer but y or yes (an empty line,
    end of input) cancels with exit 1 and nothing changed."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if answer.strip().lower() in ("y", "yes"):
        return
    if not answer:  # end of input (Ctrl-D): end the question's line
        print(file=sys.stderr)
    fail("twctl: cancelled, nothing changed", EXIT_FAILED)


def _cmd_update(store: Store, args: argparse.Namespace) -> int:
    ended = housekeeping.housekeep(store, grace=args.grace)
    live = store.live_count()
    if args.json:
        print_json({"archived": [ended_json(record) for record in ended], "live": live})
        return 0
    for record in ended:
        why = f": {cell(record.termerror)}" if record.termerror else ""
        print(f"{ended_line(record)}{why}")
    print(f"{len(ended)} task(s) archived, {live} live")
    return 0


def _cmd_list(store: Store, args: argparse.Namespace) -> int:
    records = control.listing(store, name=args.name, status=args.status)
    if not args.json:
        records = [{**record, "attempt_of": attempt_of(record)} for record in records]
    print_records(records, LIST_COLUMNS, as_json=args.json, empty="No tasks.", title="Live tasks")
    return 0


def _cmd_reserve(store: Store, args: argparse.Namespace) -> int:
    taskid = store.reserve(
        args.name, unique=args.unique, info1=args.info1, info2=args.info2, info3=args.info3
    )
    if args.json:
        print_json({"taskid": taskid})
    else:
        print(taskid)
    return 0


def _cmd_feedback(store: Store, args: argparse.Namespace) -> int:
    print_json(control.current_feedback(store, args.taskid), pretty=args.pretty)
    return 0


def _cmd_history(store: Store, args: argparse.Namespace) -> int:
    filters = {
        "name": args.name,
        "taskid": args.taskid,
        "outcome": args.outcome,
        "since": args.since,
    }
    records: Iterable[dict] = HistoryWalk(store, filters, args.limit)
    caption = None
    if args.limit is None and not (args.all or args.json) and sys.stdout.isatty():
        records, caption = terminal_page(store, filters)
    print_records(
        records,
        HISTORY_COLUMNS,
        as_json=args.json,
        empty="No history.",
        title="History",
        caption=caption,
    )
    return 0


def _cmd_clear(store: Store, args: argparse.Namespace) -> int:
    if args.before is None and _asks(args) and (rows := store.history_count()):
        _confirm(f"drop all {rows} history row(s) of {escape(store.location)}?")
    sweep = LogSweep()  # the rows' logs go once their batch is committed
    notice = _progress_notice("removed")
    # Many hosts: the logs of other hosts' tasks are on their disks, for them to clear.
    here = host_id() if store.many_hosts else None
    removed = store.clear_history(before=args.before, progress=notice, logs=sweep.remove, host=here)
    if sys.stderr.isatty() and removed:
        print(file=sys.stderr)  # end the progress line
    print(f"{removed} history row(s) removed")
    report_left_logs(sweep)
    return 0


def _progress_notice(verb: str) -> Callable[[int], None] | None:
    """On a terminal, a line on stderr that counts what a long change has done so far."""
    if not sys.stderr.isatty():
        return None

    def notice(done: int) -> None:
        print(f"\r{verb} {done} row(s)...", end="", file=sys.stderr, flush=True)

    return notice


def _cmd_kill(store: Store, args: argparse.Namespace) -> int:
    return _kill(store, [args.taskid], args)


def _cmd_killall(store: Store, args: argparse.Namespace) -> int:
    taskids = control.tasks_named(store, args.name)
    if not taskids:
        fail(f"twctl: no live task named {args.name!r}", EXIT_FAILED)
    return _kill(store, taskids, args)


def _kill(store: Store, taskids: list[int], args: argparse.Namespace) -> int:
    who = control.requester()
    wait = control.default_kill_wait(store) if args.wait is None else args.wait
    ended = control.kill_tasks(store, taskids, who, wait, on_wait=_waiting_notice())
    _report_ended(ended, as_json=args.json)
    return 0


def _waiting_notice() -> Callable[[list[int]], None]:
    """Say once on a terminal that we are waiting, since a task may use its whole grace."""
    said: list[bool] = []

    def notice(pending: list[int]) -> None:
        if not said and sys.stderr.isatty():
            print(f"waiting for task(s) {', '.join(map(str, pending))} to end...", file=sys.stderr)
            said.append(True)

    return notice


def _report_ended(records: Sequence[Ended], *, as_json: bool) -> None:
    if as_json:
        print_json([ended_json(record) for record in records])
        return
    for record in records:
        print(ended_line(record))


def _cmd_show(store: Store, args: argparse.Namespace) -> int:
    details = control.describe(store, args.taskid)
    if args.json:
        print_json(details, pretty=True)
    else:
        print(key_values(details.items(), whole=("logfile", "output_tail")))
    return 0


def _cmd_watch(store: Store, args: argparse.Namespace) -> int:
    from taskwatcher.cli.watch import watch

    return watch(store, once=args.once, interval=args.interval, as_json=args.json)


def _cmd_completion(args: argparse.Namespace) -> int:
    from taskwatcher.cli import completion

    if args.task_ids:
        completion.print_task_ids(args.db)
    else:
        print(completion.script(args.shell, build_parser()), end="")
    return 0


def _seconds_option(
    parser: argparse.ArgumentParser,
    flag: str,
    default: float,
    help_text: str,
    kind: Callable[[str], float] = non_negative_seconds,
) -> None:
    parser.add_argument(flag, type=kind, default=default, metavar="SECONDS", help=help_text)


def _names(statuses: Iterable[Status]) -> list[str]:
    """Plain strings for argparse choices, so an error lists RUNNING, not <Status.RUNNING>;
    in the order of the life cycle."""
    return [status.value for status in Status if status in statuses]


def _live_status(text: str) -> str:
    """argparse type of `list --status`: a live status in any case. A wrong one is told the
    valid values, and an outcome where finished tasks are listed."""
    status = text.upper()
    if status in _names(LIVE_STATUSES):
        return status
    if status in _names(FINAL_STATUSES):
        raise argparse.ArgumentTypeError(
            f"{status} is the outcome of a finished task: see twctl history --outcome {status}"
        )
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a live status: choose from {', '.join(_names(LIVE_STATUSES))}"
    )


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The twctl command line: one subcommand per operation (the flags of taskwatcher 1.x
    are rewritten into them before parsing, see aliases). Built once per process (the
    command server builds it before it forks its workers)."""
    parser = argparse.ArgumentParser(
        prog="twctl",
        formatter_class=HelpFormatter,
        description="Control taskwatcher tasks. The flags of taskwatcher 1.x (--list, "
        "--reserve, --feedback ID, --history, --clear, --kill ID, --killall NAME, --initialize, "
        "--update) still work.",
        epilog="twctl COMMAND --help shows a command's options and an example.",
    )
    add_db_option(parser)
    add_debug_option(parser)
    add_version_option(parser)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=SubcommandParser
    )
    _add_upkeep(sub)
    _add_reads(sub)
    _add_stops(sub)
    waiting.add_wait(sub)
    add_log_commands(sub)
    add_metrics(sub)
    _add_completion(sub)
    return parser


def _add_upkeep(sub) -> None:
    """init, update, reserve and clear: the commands that change the database itself."""
    init = subcommand(
        sub,
        "init",
        _cmd_init,
        "create or recreate the database (all is lost)",
        "twctl --db ./lab.db init",
    )
    init.add_argument("--force", action="store_true", help="even while tasks are live")
    _yes_option(init)

    update = subcommand(
        sub,
        "update",
        _cmd_update,
        "expire stale reservations, archive tasks whose supervisor vanished",
        "twctl update",
    )
    _seconds_option(
        update, "--grace", housekeeping.LOST_GRACE, "SIGTERM-to-SIGKILL wait for leftover processes"
    )
    json_flag(update)

    reserve = subcommand(
        sub,
        "reserve",
        _cmd_reserve,
        "reserve a task id and print it",
        "id=$(twctl reserve --name nightly --unique)",
    )
    reserve.add_argument("--name", "--taskname", help="task name")
    reserve.add_argument(
        "--unique", action="store_true", help="fail if a live task already has this name"
    )
    for field in ("info1", "info2", "info3"):
        reserve.add_argument(f"--{field}", metavar="TEXT", help="free text kept with the task")
    json_flag(reserve)

    clear = subcommand(sub, "clear", _cmd_clear, "empty the history", "twctl clear --before 30d")
    clear.add_argument(
        "--before",
        type=parse_when,
        metavar="WHEN",
        help="only rows that ended before WHEN (keep recent ones)",
    )
    _yes_option(clear)


def _yes_option(parser: argparse.ArgumentParser) -> None:
    """--yes: a command that drops data asks first on a terminal, unless told not to."""
    parser.add_argument(
        "-y", "--yes", action="store_true", help="do not ask for confirmation on a terminal"
    )


def _add_reads(sub) -> None:
    """list, feedback, history, show and watch."""
    listing = subcommand(sub, "list", _cmd_list, "show live tasks", "twctl list --json")
    listing.add_argument("--name", "--taskname", help="only tasks with this name")
    listing.add_argument(
        "--status",
        type=_live_status,
        choices=_names(LIVE_STATUSES),
        metavar="STATUS",
        help=f"only tasks in this status: {', '.join(_names(LIVE_STATUSES))}",
    )
    json_flag(listing)

    feedback = subcommand(
        sub,
        "feedback",
        _cmd_feedback,
        "print a task's feedback as JSON (live or finished)",
        "twctl feedback 12 --pretty",
    )
    feedback.add_argument("taskid", type=task_id)
    feedback.add_argument("--pretty", action="store_true", help="indent the JSON")

    history = subcommand(
        sub,
        "history",
        _cmd_history,
        "show finished tasks, newest first",
        "twctl history --name nightly --since 7d --json",
    )
    history.add_argument("--name", "--taskname", help="only tasks with this name")
    history.add_argument(
        "--taskid",
        type=task_id,
        metavar="ID",
        help="only this task: its one row, or a row per attempt when it was retried",
    )
    history.add_argument(
        "--outcome",
        type=str.upper,
        choices=_names(FINAL_STATUSES),
        help="only tasks that ended so",
    )
    history.add_argument(
        "--since",
        type=parse_when,
        metavar="WHEN",
        help="ended at or after WHEN (2h, 7d, 2026-11-28, unix seconds)",
    )
    count = history.add_mutually_exclusive_group()
    count.add_argument("--limit", type=positive_int, metavar="N", help="at most N rows")
    count.add_argument(
        "--all", action="store_true", help=f"every row (on a terminal the default is {PAGE})"
    )
    json_flag(history)

    show = subcommand(sub, "show", _cmd_show, "everything known about one task", "twctl show 12")
    show.add_argument("taskid", type=task_id)
    json_flag(show)

    watch = subcommand(
        sub,
        "watch",
        _cmd_watch,
        "live view of tasks with progress bars (q or Ctrl-C to leave)",
        "twctl watch",
    )
    watch.add_argument("--once", action="store_true", help="print one frame and exit")
    _seconds_option(watch, "--interval", 1.0, "seconds between refreshes", positive_seconds)
    json_flag(watch)


def _add_stops(sub) -> None:
    """kill and killall."""
    for name, handler, target, help_text, example in (
        ("kill", _cmd_kill, "taskid", "stop a task (a reservation is cancelled)", "twctl kill 12"),
        (
            "killall",
            _cmd_killall,
            "name",
            "stop every live task with this name",
            "twctl killall nightly",
        ),
    ):
        killer = subcommand(sub, name, handler, help_text, example)
        killer.add_argument(target, type=task_id if target == "taskid" else str)
        killer.add_argument(
            "--wait",
            type=non_negative_seconds,
            metavar="SECONDS",
            help=f"how long to wait for the end (default {control.DEFAULT_KILL_WAIT:g}, or"
            " 5 more than the lease on a database of many hosts)",
        )
        json_flag(killer)


def _add_completion(sub) -> None:
    """completion: the shell scripts, and the task ids they ask twctl for as they complete."""
    completion = subcommand(
        sub,
        "completion",
        _cmd_completion,
        "print the bash or zsh completion script (commands, options, live task ids)",
        'eval "$(twctl completion bash)"   # in ~/.bashrc\n'
        "  source <(twctl completion zsh)    # in ~/.zshrc, after compinit",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")
    # What the scripts ask for as they complete: live task ids, one a line, never an error.
    completion.add_argument("--task-ids", action="store_true", help=argparse.SUPPRESS)


@interruptible
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `twctl` console script."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not words:  # a usage error that lists the commands, on stderr like any other
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(expand_aliases(words))
    setup_logging("twctl", args.debug)
    if args.command in WITHOUT_STORE:
        return args.handler(args)
    try:
        with open_store(args.db, _access(args.command)) as store:
            if args.command not in NO_HOUSEKEEPING:
                housekeeping.housekeep(store)
            status = args.handler(store, args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read the output stopped early (`twctl list | head -1`): not our error.
        silence_stdout()
        return 0
    except (StoreError, InvalidRequest) as error:
        fail(f"twctl: {error}", EXIT_USAGE)
    except TaskwatcherError as error:
        fail(f"twctl: {error}", EXIT_FAILED)
    return status


if __name__ == "__main__":
    sys.exit(main())
