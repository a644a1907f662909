"""`twctl watch`: a live view of the tasks, their health and their progress bars."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from taskwatcher.cli.progress import progress_of
from taskwatcher.cli.render import STATUS_STYLES, cell, escape, human_duration
from taskwatcher.engine import control, housekeeping
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.store import Store

#: Feedback keys shown beside the bar, first present wins each slot.
DETAIL_KEYS = ("testcase_name", "testcase_id", "info", "step", "message", "status")
QUIT_KEYS = {"q", "Q"}
BAR_WIDTH = 10
PROGRESS_WIDTH = BAR_WIDTH + 7  # the bar, a space and "100.0%"


def _heartbeat_cell(record: dict[str, Any]) -> Text:
    timer, timeout = record.get("timer"), record.get("timeout")
    if record["status"] == Status.RESERVED:
        return Text("-")
    if not record["feedback"] or not timeout:
        return Text(human_duration(timer) if timer is not None else "-")
    style = STATUS_STYLES.get(record["status"], "")
    return Text(f"{human_duration(timer)}/{human_duration(timeout)}", style=style)


def _progress_cell(feedback: dict[str, str]) -> Any:
    value = progress_of(feedback)
    if value is None:
        return Text("")
    cell = Table.grid(padding=(0, 1))
    cell.add_row(ProgressBar(total=100, completed=value, width=BAR_WIDTH), Text(f"{value:5.1f}%"))
    return cell


def _detail_cell(feedback: dict[str, str]) -> Text:
    shown = [cell(feedback[key]) for key in DETAIL_KEYS if feedback.get(key)]
    return Text(" · ".join(shown[:2]))


def render_frame(store: Store, now: float | None = None) -> Table:
    """One screen: every live task with status, heartbeat against timeout, progress, details,
    and its host when the tasks run on several.

    Feedback is what each supervisor published in the database, never read from the files.
    """
    records = control.listing(store)
    feedbacks = store.live_feedback()
    now = time.time() if now is None else now
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    table = Table(
        # Text, not a str: rich would read brackets in the path as markup.
        title=Text(f"taskwatcher · {escape(store.location)} · {len(records)} live · {clock}"),
        caption="q or Ctrl-C to leave",
        header_style="bold",
    )
    hosts = len({record["host"] for record in records if record["host"] is not None}) > 1
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=6)
    if hosts:
        table.add_column("host", overflow="fold")
    for header in ("status", "pid", "up", "heartbeat"):
        table.add_column(header, no_wrap=True)
    table.add_column("progress", no_wrap=True, min_width=PROGRESS_WIDTH)
    table.add_column("detail", overflow="fold", ratio=1)
    if not records:
        table.add_row("", Text("No tasks."), *[""] * 6)
    for record in records:
        feedback = feedbacks.get(record["taskid"], {})
        table.add_row(
            str(record["taskid"]),
            Text(cell(record["name"])),
            *([Text(cell(record["host"]))] if hosts else []),
            Text(record["status"], style=STATUS_STYLES.get(record["status"], "")),
            cell(record["pid"]),
            human_duration(record["duration"]),
            _heartbeat_cell(record),
            _progress_cell(feedback),
            _detail_cell(feedback),
        )
    return table


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


def watch(store: Store, *, once: bool = False, interval: float = 1.0) -> int:
    """Refresh the view every `interval` seconds until q or Ctrl-C; `once` prints one frame."""
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
