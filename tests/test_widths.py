"""Tables as a person sees them in terminals of 200, 80, 60 and 40 columns (tmux): no cell
wraps, ids, statuses, pids and times stay whole, free text is cut with an ellipsis, and the
least needed columns drop out in the documented order."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault_helpers import twctl, twctl_json
from tests.helpers import BIN, run_cli, start_cli, wait_for
from tests.tmux_helpers import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

#: (columns, lines) of the terminals the tables are drawn in.
SIZES = [(200, 50), (80, 24), (60, 24), (40, 24)]
#: The README's order in which columns drop out (twctl: Output), and those always shown.
DROP_ORDER = {
    "list": ["info3", "info2", "info1", "timeout", "feedback", "starttime", "timer", "said",
             "pid", "duration"],
    "history": ["info3", "info2", "info1", "signal", "starttime", "error", "exit", "duration",
                "endtime"],
    "watch": ["pid", "up", "heartbeat", "detail", "progress"],
}  # fmt: skip
ALWAYS = {
    "list": ["taskid", "name", "status"],
    "history": ["taskid", "name", "outcome"],
    "watch": ["id", "name", "status"],
}
STATUSES = r"RESERVED|RUNNING|SILENT|STALLED|COMPLETED|FAILED|TIMEOUT|KILLED|LOST|EXPIRED"
#: A table row: its first cell a task id, and somewhere a whole status.
ROW = re.compile(rf"^│ (\d+) +│.*│ ({STATUSES}) +│")
FEEDBACK = "[status]{said}\n[testcase_name]{name}\n[progress]42\n"
SAID = "compiling the second half of the regression suite"
NAME = "nightly-regression-suite-on-the-big-box-{}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A database, deep enough that its path is longer than a narrow terminal, holding three
    running tasks that reported progress, a reservation and three finished tasks."""
    folder = (
        tmp_path_factory.mktemp("widths")
        / "a-rather-long-folder-name"
        / "of-the-lab-on-the-third-floor"
        / "state"
    )
    folder.mkdir(parents=True)
    db = folder / "tasks.db"
    info = ("--info1", "linux x86_64 gcc 13.2 -O2", "--info2", "branch feature/x", "--info3", "l3")
    ending = [
        start_cli(
            "twrun", "--db", db, "--name", NAME.format(name), *info, "--", "sh", "-c", command
        )
        for command, name in (("true", "fine"), ("false", "broken"), ("kill -TERM $$", "shot"))
    ]
    twctl(db, "reserve", "--name", NAME.format("later"), *info)
    for runner in ending:
        runner.communicate(timeout=60)
    report = FEEDBACK.format(said=SAID, name="Setting up the topology")
    reports = ["sh", "-c", 'printf "$1" > "$TASKWATCHER_FEEDBACK"; exec sleep 600', "sh", report]
    options = ["--db", db, *info, "--timeout", "600", "--grace", "1"]
    names = [NAME.format(step) for step in range(3)]
    runners = [start_cli("twrun", *options, "--name", name, "--", *reports) for name in names]
    wait_for(lambda: sum(task["said"] == SAID for task in twctl_json(db, "list")) == 3, 60)
    yield db
    for runner in runners:
        runner.terminate()
    for runner in runners:
        runner.wait(timeout=30)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    with Tmux(tmp_path / "tmux.sock", "w") as server:
        yield server


def drawn(tmux: Tmux, size: tuple[int, int], *argv: str | Path) -> list[str]:
    """The screen once `twctl ARGV` has run in a terminal of `size`, wrapped lines joined
    (a line longer than the terminal is one that wrapped)."""
    command = shlex.join([str(BIN / "twctl"), *map(str, argv)])
    # The test runner's workers may export COLUMNS and LINES, which rich would prefer.
    shell = f"unset COLUMNS LINES; {command}; echo TWCTL-EXIT=$?; sleep 60"
    tmux.start(shell, width=size[0], height=size[1])
    screen = wait_for(lambda: "TWCTL-EXIT=" in (s := tmux("capture-pane", "-pJ", "-t", "w")) and s)
    shown = [line.rstrip() for line in screen.splitlines() if line.strip()]
    assert shown[-1] == "TWCTL-EXIT=0", screen
    return shown[:-1]


def headers(screen: list[str]) -> list[str]:
    (line,) = [line for line in screen if line.startswith("┃")]
    return [header.strip() for header in line.strip("┃").split("┃")]


def assert_fits(screen: list[str], width: int, command: str) -> list[str]:
    """Nothing wrapped, the columns always shown are there, and those gone are the first of
    the drop order; returns the headers shown."""
    assert max(map(len, screen)) <= width, "\n".join(screen)
    shown = headers(screen)
    assert set(ALWAYS[command]) <= set(shown), shown
    dropped = [header for header in DROP_ORDER[command] if header not in shown]
    assert dropped == DROP_ORDER[command][: len(dropped)], shown
    return shown


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_list_fits_the_terminal(tmux: Tmux, lab: Path, size: tuple[int, int]) -> None:
    screen = drawn(tmux, size, "--db", lab, "list")
    shown = assert_fits(screen, size[0], "list")
    tasks = {task["taskid"]: task for task in twctl_json(lab, "list")}
    rows = {int(match[1]): line for line in screen if (match := ROW.match(line))}
    assert rows.keys() == tasks.keys(), "\n".join(screen)
    for taskid, line in rows.items():
        assert f"│ {tasks[taskid]['status']} " in line
        if "pid" in shown and tasks[taskid]["pid"]:
            assert f"│ {tasks[taskid]['pid']} " in line
    assert "…" in "".join(rows.values())  # the long names are cut, never wrapped
    if size[0] >= 200:
        assert len(shown) == 14 and all("│ l3 " in row for row in rows.values())
    if size[0] <= 80:
        assert "info1" not in shown


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_history_fits_the_terminal(tmux: Tmux, lab: Path, size: tuple[int, int]) -> None:
    screen = drawn(tmux, size, "--db", lab, "history")
    shown = assert_fits(screen, size[0], "history")
    outcomes = {record["taskid"]: record["outcome"] for record in twctl_json(lab, "history")}
    rows = {int(match[1]): match[2] for line in screen if (match := ROW.match(line))}
    assert rows == outcomes, "\n".join(screen)
    if size[0] >= 200:
        assert len(shown) == 13
        assert any("│ exit status 1 " in line for line in screen)  # free text whole if room


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_watch_keeps_its_title_on_one_line(tmux: Tmux, lab: Path, size: tuple[int, int]) -> None:
    width = size[0]
    assert len(str(lab)) > 80
    title, *table = drawn(tmux, size, "--db", lab, "watch", "--once")
    assert re.fullmatch(r"taskwatcher · .+ · 4 live · \d\d:\d\d:\d\d", title), title
    assert len(title) <= width
    location = title.split(" · ")[1]
    if width >= 200:
        assert location == str(lab)
    else:  # cut at its start: its end names the file
        assert location.startswith("…") and str(lab).endswith(location[1:]), title
    shown = assert_fits(table, width, "watch")
    rows = [line for line in table if ROW.match(line)]
    assert len(rows) == 4, "\n".join(table)
    if "progress" in shown:
        assert sum("42.0%" in row for row in rows) == 3


def test_pipes_get_every_column_whatever_the_width(lab: Path) -> None:
    """Scripts read piped tables: their columns do not depend on a terminal's width."""
    narrow = {**os.environ, "COLUMNS": "40"}
    for command, columns, rows in (("list", 14, 4), ("history", 13, 3)):
        header, *lines = twctl(lab, command, env=narrow).splitlines()
        assert len(header.split()) == columns and len(lines) == rows
        assert all(NAME.format("") in line and "…" not in line for line in lines)


def test_watch_once_json_prints_the_tasks_as_list_does(lab: Path) -> None:
    watched, listed = twctl_json(lab, "watch", "--once"), twctl_json(lab, "list")
    assert [list(task) for task in watched] == [list(task) for task in listed]
    moving = {"duration", "timer", "lastupdate"}  # computed when read
    for task in (*watched, *listed):
        for key in moving:
            task.pop(key)
    assert watched == listed and len(watched) == 4


def test_watch_json_needs_once(lab: Path) -> None:
    result = run_cli("twctl", "--db", lab, "watch", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--once" in result.stderr
    assert "Traceback" not in result.stderr
