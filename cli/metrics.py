"""`twctl metrics`: the tasks in Prometheus' text exposition format (version 0.0.4).

Printed for a scrape through any wrapper, or written atomically with `--textfile` for
node_exporter's textfile collector, which must never read a half-written file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from taskwatcher.cli import EXIT_FAILED
from taskwatcher.cli.common import fail, subcommand
from taskwatcher.cli.progress import progress_of
from taskwatcher.cli.render import escape
from taskwatcher.cli.timespec import parse_age
from taskwatcher.engine.lifecycle import LIVE_STATUSES, Status
from taskwatcher.engine.records import Task
from taskwatcher.engine.store import Store
from taskwatcher.grammar.datatype import datatype, field

#: The history window counted unless `--window` says otherwise: a day, as a daily job needs.
DEFAULT_WINDOW = 86400.0
#: Live statuses in the order of the life cycle, so the output reads the same every time.
_LIVE_ORDER = [status for status in Status if status in LIVE_STATUSES]


@datatype
class Family:
    """One metric: its name, what it means, and its samples (labels, value)."""

    name: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


def add_metrics(sub) -> None:
    """Register `twctl metrics [--window AGE] [--textfile PATH]`."""
    parser = subcommand(
        sub,
        "metrics",
        _cmd_metrics,
        "print the tasks' state for Prometheus (text exposition format)",
        "twctl metrics --textfile /var/lib/node_exporter/textfile_collector/taskwatcher.prom",
    )
    parser.add_argument(
        "--window",
        type=parse_age,
        default=DEFAULT_WINDOW,
        metavar="AGE",
        help="count the tasks that ended within this age (default 1d; e.g. 1h, 7d)",
    )
    parser.add_argument(
        "--textfile",
        type=_file_path,
        metavar="PATH",
        help="write to PATH atomically instead of printing (name it *.prom for node_exporter)",
    )


def _file_path(text: str) -> Path:
    """argparse type: a path that can name a file (`""`, `.` and `/` cannot)."""
    path = Path(text)
    if not text or not path.name or path.name in (".", ".."):
        raise argparse.ArgumentTypeError(f"not a file name: {text!r}")
    return path


def _cmd_metrics(store: Store, args: argparse.Namespace) -> int:
    text = exposition(collect(store, window=args.window))
    if args.textfile is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode())  # the format is UTF-8 whatever the locale
        return 0
    try:
        write_atomically(args.textfile, text.encode())
    except OSError as error:
        fail(f"twctl: cannot write {escape(args.textfile)}: {error.strerror or error}", EXIT_FAILED)
    return 0


def collect(store: Store, *, window: float) -> list[Family]:
    """Every metric, read in one pass over the live tasks and two grouped history queries."""
    now = store.now()
    tasks = store.list_tasks()
    families = [_live_counts(tasks), *_per_task(store, tasks, now)]
    families.extend(_history(store, now, window))
    return families


def _live_counts(tasks: list[Task]) -> Family:
    counts = Family("taskwatcher_live_tasks", "Live tasks by name and status.")
    by_name: dict[str, dict[str, int]] = {}
    for task in tasks:
        statuses = by_name.setdefault(task.name or "", dict.fromkeys(_LIVE_ORDER, 0))
        statuses[task.status] = statuses.get(task.status, 0) + 1
    for name, statuses in sorted(by_name.items()):
        for status, count in statuses.items():
            counts.add(count, name=name, status=status)
    return counts


def _per_task(store: Store, tasks: list[Task], now: float) -> list[Family]:
    """Gauges of each live task, labelled by id, name and host (empty on one host)."""
    age = Family(
        "taskwatcher_task_heartbeat_age_seconds",
        "Seconds since the task's last heartbeat (since its start before any).",
    )
    timeout = Family("taskwatcher_task_timeout_seconds", "The task's heartbeat timeout.")
    started = Family("taskwatcher_task_start_time_seconds", "When the task started, unix time.")
    progress = Family(
        "taskwatcher_task_progress_ratio", "The task's numeric progress feedback, 0 to 1."
    )
    attempt = Family(
        "taskwatcher_task_attempt",
        "The attempt of a task launched more than once (between two: the one to come).",
    )
    feedback = store.live_feedback() if tasks else {}
    for task in tasks:
        labels = {"taskid": str(task.taskid), "name": task.name or "", "host": task.host or ""}
        if task.timeout is not None:
            timeout.add(task.timeout, **labels)
        if task.attempt > 1:
            attempt.add(task.attempt, **labels)
        heartbeat_age = task.heartbeat_age(now)
        if heartbeat_age is None:
            continue  # a reservation: no heartbeat, no start, no progress yet
        started.add(task.starttime, **labels)
        age.add(max(heartbeat_age, 0.0), **labels)
        value = progress_of(feedback.get(task.taskid, {}))
        if value is not None:
            progress.add(value / 100, **labels)
    return [age, timeout, started, progress, attempt]


def _history(store: Store, now: float, window: float) -> list[Family]:
    ended = Family(
        "taskwatcher_ended_tasks",
        "Tasks that ended within the window, by name and outcome (each attempt of a retried"
        " one counts).",
    )
    last = Family(
        "taskwatcher_last_end_time_seconds",
        "When the last task of this name and outcome ended, unix time (whole history).",
    )
    for tally in store.history_tally(now - window):
        labels = {"name": tally.taskname, "outcome": tally.outcome}
        ended.add(tally.count, **labels)
        last.add(tally.last_end, **labels)
    span = Family("taskwatcher_ended_window_seconds", "The window taskwatcher_ended_tasks counts.")
    span.add(window)
    return [ended, span, last]


def exposition(families: Iterable[Family]) -> str:
    """The text format: per family its HELP and TYPE lines, then one line per sample."""
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} gauge")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{key}="{_label_value(value)}"' for key, value in labels.items())
    return "{" + pairs + "}"


def _label_value(text: str) -> str:
    """Escaped as the format asks (backslash, quote, newline), and always valid UTF-8: a
    name from a command line may hold bytes that are not (kept as surrogates)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside `path` under a hidden name, then rename over it: a reader sees the old
    file or the new one, never part of one. The mode follows the umask (node_exporter runs
    as another user and must be able to read it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
