"""`twctl log` and `twctl follow`: a task's captured output, as its log on disk holds it.

The bytes go to stdout as the task wrote them (binary-safe, for grep and friends), except
on a terminal: there every control character but newline and tab shows as an escape
(`\\x1b`, `\\r`), as in every table cell, and bytes that are not UTF-8 as `\\xNN`, so
output read back later cannot drive the reader's terminal. `--json` decodes each line the
same way for bytes that are not UTF-8, and leaves the rest to JSON's own escaping.
"""

from __future__ import annotations

import argparse
import codecs
import functools
import sys
from collections.abc import Callable, Iterable, Iterator

from taskwatcher.cli import EXIT_FAILED
from taskwatcher.cli.common import fail, json_flag, positive_int, subcommand, task_id
from taskwatcher.cli.render import escape, escape_output, json_bytes, json_items
from taskwatcher.engine.follow import follow
from taskwatcher.engine.logs import (
    LogSweep,
    NotALog,
    OpenLog,
    TaskLog,
    elsewhere,
    log_of,
    pushed_lines,
    record_of,
)
from taskwatcher.engine.records import Ended, Task
from taskwatcher.engine.stopping import twrun_exit_code
from taskwatcher.engine.store import Store

Handler = Callable[[Store, argparse.Namespace], int]


def add_log_commands(sub) -> None:
    """Register `twctl log ID [-n N] [--json]` and `twctl follow ID`."""
    log = subcommand(
        sub,
        "log",
        _cmd_log,
        "print a task's captured output (live or finished)",
        "twctl log 12 -n 20",
    )
    log.add_argument("taskid", type=task_id)
    log.add_argument("-n", "--lines", type=positive_int, metavar="N", help="only the last N lines")
    json_flag(log)
    follow_parser = subcommand(
        sub,
        "follow",
        _cmd_follow,
        "print a task's output as it comes until the task ends, then exit with its twrun"
        " status (LOST, EXPIRED: 125)",
        "twctl follow 12",
    )
    follow_parser.add_argument("taskid", type=task_id)


def _refusals_escaped(handler: Handler) -> Handler:
    """A refused log's message names a path from the database: shown escaped, like cells."""

    @functools.wraps(handler)
    def run(store: Store, args: argparse.Namespace) -> int:
        try:
            return handler(store, args)
        except NotALog as error:
            fail(f"twctl: {escape(str(error))}", EXIT_FAILED)

    return run


@_refusals_escaped
def _cmd_log(store: Store, args: argparse.Namespace) -> int:
    record = record_of(store, args.taskid)
    if (host := elsewhere(store, record)) is not None:
        return _log_elsewhere(record, host, args)
    tasklog = log_of(record)
    with OpenLog(tasklog) as opened:
        lines: Iterable[bytes]
        if args.lines is None:
            lines, chunks, whole = opened.lines(), opened.chunks(), True
        else:
            lines, whole = opened.last_lines(args.lines)
            chunks = _with_newlines(lines)
        _print_log(tasklog, lines, chunks, as_json=args.json)
        if opened.rotated and whole:
            _say_rotated(args.taskid, opened.kept)
    # DESIGN.md: `log` exits as the task's twrun did once it has ended; 0 while it runs.
    ended = store.history_of(args.taskid)
    return twrun_exit_code(ended) if ended is not None else 0


def _log_elsewhere(record: Task | Ended, host: str, args: argparse.Namespace) -> int:
    """A log on another host's disk: the last lines its supervisor pushed (or history kept),
    and a note on stderr of where the whole log is."""
    tasklog = log_of(record)
    lines = pushed_lines(record, args.lines)
    _print_log(tasklog, lines, _with_newlines(lines), as_json=args.json)
    print(
        f"twctl: task {record.taskid} ran on host {escape(host)}: these are the last lines its"
        f" supervisor pushed; the whole log is {escape(tasklog.logfile)} on that host",
        file=sys.stderr,
    )
    return twrun_exit_code(record) if isinstance(record, Ended) else 0


@_refusals_escaped
def _cmd_follow(store: Store, args: argparse.Namespace) -> int:
    out = _Output()
    ended = follow(
        store, args.taskid, out.write, notice=lambda kept: _say_rotated(args.taskid, kept)
    )
    out.close()
    return twrun_exit_code(ended)


def _print_log(
    tasklog: TaskLog, lines: Iterable[bytes], chunks: Iterable[bytes], *, as_json: bool
) -> None:
    """The log's lines as JSON, or its bytes as the task wrote them (escaped on a terminal)."""
    if as_json:
        _print_json(tasklog, lines)
        return
    out = _Output()
    for chunk in chunks:
        out.write(chunk)
    out.close()


def _with_newlines(lines: Iterable[bytes]) -> Iterator[bytes]:
    """Lines split off a log, each with its newline again, to be written as bytes."""
    return (line + b"\n" for line in lines)


def _print_json(tasklog: TaskLog, lines: Iterable[bytes]) -> None:
    """`{"taskid", "logfile", "lines"}`, written as it goes: one line in memory at a time."""
    head = json_bytes({"taskid": tasklog.taskid, "logfile": tasklog.logfile, "lines": []})
    out = sys.stdout.buffer
    out.write(head.removesuffix(b"]}"))  # the lines go between the brackets
    separator = b""
    for item in json_items(line.decode(errors="backslashreplace") for line in lines):
        out.write(separator + item)
        separator = b","
    out.write(b"]}\n")
    out.flush()


def _say_rotated(taskid: int, kept: int) -> None:
    print(
        f"twctl: task {taskid}'s log was rotated: these are the last {kept} bytes of its"
        " output; any before them are gone",
        file=sys.stderr,
        flush=True,
    )


class _Output:
    """stdout for a task's bytes: as they are when piped, escaped on a terminal (a character
    may straddle two writes, so the decoding carries over). Flushed at each write, so that
    `follow` shows output as it comes."""

    def __init__(self) -> None:
        sys.stdout.flush()  # nothing of ours is buffered ahead of the bytes
        self._terminal = sys.stdout.isatty()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")

    def write(self, data: bytes) -> None:
        if self._terminal:
            sys.stdout.write(escape_output(self._decoder.decode(data)))
            sys.stdout.flush()
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def close(self) -> None:
        if self._terminal:
            sys.stdout.write(escape_output(self._decoder.decode(b"", final=True)))
        sys.stdout.flush()


def report_left_logs(sweep: LogSweep) -> None:
    """After `clear`: how many logs were left in place, not proven to be taskwatcher's."""
    if sweep.left:
        print(
            f"twctl: {sweep.left} log(s) left in place: not proven to be taskwatcher logs"
            " (-v says why)",
            file=sys.stderr,
        )
