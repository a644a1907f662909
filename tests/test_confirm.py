"""`init` and `clear` ask before dropping data, on a real terminal; scripts are not asked."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from taskwatcher.engine.store import open_store
from tests.helpers import BIN, run_cli, wait_for
from tests.tmux_helpers import Tmux, needs_tmux

QUESTION = "[y/N]"


def with_history(db: Path, rows: int = 2) -> None:
    """`rows` cancelled reservations in history, and no live task."""
    with open_store(db) as store:
        for _ in range(rows):
            store.cancel_reservation(store.reserve("old"), "test")


def history_rows(db: Path) -> int:
    with open_store(db) as store:
        return len(store.history())


def on_terminal(tmp_path: Path, args: list[str], *answer: str) -> tuple[int, str]:
    """Run twctl on a terminal; once it asks, type `answer` (nothing: it must not ask).
    Returns its exit status and the screen."""
    command = shlex.join([str(BIN / "twctl"), *args])
    with Tmux(tmp_path / "tmux.sock", "confirm") as tmux:
        tmux.start(f"{command}; echo EXIT=$?; sleep 60", width=250)
        if answer:
            wait_for(lambda: QUESTION in tmux.screen())
            tmux.keys(*answer)
        screen = wait_for(lambda: "EXIT=" in (text := tmux.screen()) and text)
    return int(screen.split("EXIT=")[1].split()[0]), screen


pytestmark = needs_tmux


def test_clear_goes_ahead_on_y(tmp_path: Path, db_path: Path) -> None:
    with_history(db_path)
    status, screen = on_terminal(tmp_path, ["--db", str(db_path), "clear"], "y", "Enter")
    assert f"drop all 2 history row(s) of {db_path}? {QUESTION}" in screen
    assert status == 0 and "2 history row(s) removed" in screen
    assert history_rows(db_path) == 0


@pytest.mark.parametrize(
    ("answer", "status"),
    [(["n", "Enter"], 1), (["Enter"], 1), (["C-d"], 1), (["C-c"], 130)],
)
def test_clear_cancelled_changes_nothing(
    tmp_path: Path, db_path: Path, answer: list[str], status: int
) -> None:
    with_history(db_path)
    assert on_terminal(tmp_path, ["--db", str(db_path), "clear"], *answer)[0] == status
    assert history_rows(db_path) == 2


def with_history_and_a_live_task(db: Path) -> list[str]:
    """Two history rows and a live task; the arguments of an init that drops them all."""
    with_history(db)
    with open_store(db) as store:
        store.reserve("live")
    return ["--db", str(db), "init", "--force"]


def test_init_asks_naming_what_it_drops(tmp_path: Path, db_path: Path) -> None:
    args = with_history_and_a_live_task(db_path)
    status, screen = on_terminal(tmp_path, args, "n", "Enter")
    assert f"recreate {db_path}, dropping 2 history row(s) and 1 live task(s)? {QUESTION}" in screen
    assert status == 1 and "twctl: cancelled, nothing changed" in screen
    assert history_rows(db_path) == 2


def test_init_goes_ahead_on_yes(tmp_path: Path, db_path: Path) -> None:
    args = with_history_and_a_live_task(db_path)
    assert on_terminal(tmp_path, args, "YES", "Enter")[0] == 0
    assert history_rows(db_path) == 0


def test_init_refuses_live_tasks_before_asking(tmp_path: Path, db_path: Path) -> None:
    with open_store(db_path) as store:
        store.reserve("live")
    status, screen = on_terminal(tmp_path, ["--db", str(db_path), "init"])
    assert status == 1 and "use --force to drop them" in screen and QUESTION not in screen


@pytest.mark.parametrize(
    "args",
    [["clear", "--yes"], ["clear", "--before", "1d"], ["init", "-y"]],
)
def test_no_question_when_told_or_when_only_old_rows_go(
    tmp_path: Path, db_path: Path, args: list[str]
) -> None:
    with_history(db_path)
    status, screen = on_terminal(tmp_path, ["--db", str(db_path), *args])
    assert status == 0 and QUESTION not in screen


@pytest.mark.parametrize("args", [["clear"], ["init"]])
def test_no_question_when_nothing_would_be_lost(
    tmp_path: Path, db_path: Path, args: list[str]
) -> None:
    with open_store(db_path):
        pass  # an empty database
    status, screen = on_terminal(tmp_path, ["--db", str(db_path), *args])
    assert status == 0 and QUESTION not in screen


@pytest.mark.parametrize("args", [["clear"], ["--initialize"]])
def test_scripts_are_not_asked(db_path: Path, args: list[str]) -> None:
    with_history(db_path)
    result = run_cli("twctl", "--db", db_path, *args)  # stdin is not a terminal
    assert result.returncode == 0 and result.stderr == ""
    assert history_rows(db_path) == 0
