"""`twctl watch`: a live view of the tasks, their health and their progress bars."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from taskwatcher.cli.columns import attempt_of
from taskwatcher.cli.common import fail
from taskwatcher.cli.fit import FIXED, FREE, Fit, cut_text, fitted_table
from taskwatcher.cli.progress import progress_of
from taskwatcher.cli.render import STATUS_STYLES, cell, escape, human_duration, print_json_array
from taskwatcher.engine import control, housekeeping
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.store import Store

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
    from rich.text import Text

#: Feedback keys shown beside the bar, first present wins each slot.
DETAIL_KEYS = ("testcase_name", "testcase_id", "info", "step", "message", "status")
QUIT_KEYS = {"q", "Q"}
BAR_WIDTH = 10
#: The frame's columns and how each gives way on a narrow terminal: pid drops out first, then
#: up, heartbeat, host, detail and progress; id, name and status always stay. The host column
#: is there only while the tasks run on several hosts.
COLUMNS = {
    "id": FIXED,
    "name": FREE,
    "host": Fit(free=True, rank=4),
    "status": FIXED,
    "pid": Fit(rank=1),
    "up": Fit(rank=2),
    "heartbeat": Fit(rank=3),
    "progress": Fit(rank=6),
    "detail": Fit(free=True, rank=5),
}


def _heartbeat_cell(record: dict[str, Any]) -> Text:
    from rich.text import Text

    timer, timeout = record.get("timer"), record.get("timeout")
    if record["status"] == Status.RESERVED:
        return Text("-")
    if not record["feedback"] or not timeout:
        return Text(human_duration(timer) if timer is not None else "-")
    style = STATUS_STYLES.get(record["status"], "")
    return Text(f"{human_duration(timer)}/{human_duration(timeout)}", style=style)


def _progress_cell(feedback: dict[str, str]) -> RenderableType:
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    value = progress_of(feedback)
    if value is None:
        return Text("")
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=100, completed=value, width=BAR_WIDTH), Text(f"{value:5.1f}%"))
    return bar


def _attempt_detail(record: dict[str, Any], now: float) -> str | None:
    """`attempt 2/4 in 5s` while a task waits to be launched again; `attempt 2/4` while a
    retried one runs; None for a task launched once."""
    attempt = attempt_of(record)
    if attempt is None:
        return None
    retry_at = record.get("retry_at")
    if record["status"] != Status.RETRYING or not isinstance(retry_at, float):
        return f"attempt {attempt}"
    return f"attempt {attempt} in {human_duration(max(0.0, retry_at - now))}"


def _detail(feedback: dict[str, str]) -> str:
    shown = [cell(feedback[key]) for key in DETAIL_KEYS if feedback.get(key)]
    return " · ".join(shown[:2])


def title_line(location: str, summary: str, width: int) -> str:
    """`taskwatcher · LOCATION · SUMMARY` within `width` characters: a long location loses
    its start, since its end names the database."""
    room = width - len(f"taskwatcher ·  · {summary}")
    if len(location) > room:
        keep = max(room - 1, 0)
        location = "…" + (location[-keep:] if keep else "")
    return f"taskwatcher · {location} · {summary}"


class Frame:
    """One screen of `watch`, laid out when drawn: a title line, then the tasks' table with
    the columns that fit the width it is drawn in (a terminal may be resized meanwhile)."""

    def __init__(
        self,
        location: str,
        summary: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[RenderableType]],
    ) -> None:
        self.location = location
        self.summary = summary
        self.columns = columns
        self.rows = rows

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        # Text, not a str: rich would read brackets in the path as markup.
        yield cut_text(title_line(self.location, self.summary, width), "bold")
        fits = [COLUMNS[header] for header in self.columns]
        yield fitted_table(
            console,
            width,
            self.columns,
            fits,
            self.rows,
            caption="q or Ctrl-C to leave",
            header_style="bold",
        )


def render_frame(store: Store, now: float | None = None) -> Frame:
    """One screen: every live task with status, heartbeat against timeout, progress, details,
    and its host when the tasks run on several.

    Feedback is what each supervisor published in the database, never read from the files.
    """
    from rich.text import Text

    records = control.listing(store)
    feedbacks = store.live_feedback()
    now = time.time() if now is None else now
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    hosts = len({record["host"] for record in records if record["host"] is not None}) > 1
    columns = [header for header in COLUMNS if hosts or header != "host"]
    rows = []
    if not records:
        rows.append([Text(""), cut_text("No tasks."), *[Text("")] * (len(columns) - 2)])
    for record in records:
        feedback = feedbacks.get(record["taskid"], {})
        rows.append(
            [
                Text(str(record["taskid"])),
                cut_text(cell(record["name"])),
                *([cut_text(cell(record["host"]))] if hosts else []),
                Text(record["status"], style=STATUS_STYLES.get(record["status"], "")),
                Text(cell(record["pid"])),
                Text(human_duration(record["duration"])),
                _heartbeat_cell(record),
                _progress_cell(feedback),
                cut_text(
                    " · ".join(filter(None, [_attempt_detail(record, now), _detail(feedback)]))
                ),
            ]
        )
    return Frame(escape(store.location), f"{len(records)} live · {clock}", columns, rows)


@contextlib.contextmanager
def _keyboard() -> Iterator[int | None]:
    """Single keys without Enter while watching; the terminal is restored however we leave."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_key(fd: int | None, timeout: float) -> str | None:
    if fd is None:
        time.sleep(timeout)
        return None
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 32).decode(errors="replace") if ready else None


def watch(store: Store, *, once: bool = False, interval: float = 1.0, as_json: bool = False) -> int:
    """Refresh the view every `interval` seconds until q or Ctrl-C; `once` prints one frame,
    or with `as_json` the live tasks as `list --json` prints them."""
    if as_json:
        if not once:
            fail("twctl: watch --json needs --once (it prints the tasks once, as list --json)", 2)
        print_json_array(control.listing(store), sys.stdout)
        return 0
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if once:
        console.print(render_frame(store))
        return 0
    live = Live(render_frame(store), console=console, auto_refresh=False)
    with contextlib.suppress(KeyboardInterrupt), _keyboard() as fd, live:
        while True:
            key = _wait_for_key(fd, interval)
            if key and QUIT_KEYS & set(key):
                break
            housekeeping.housekeep(store)
            live.update(render_frame(store), refresh=True)
    return 0
