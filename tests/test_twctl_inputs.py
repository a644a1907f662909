"""twctl facing odd input: out-of-range numbers, closed pipes, markup in paths, bad options."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from taskwatcher.engine.errors import InvalidRequest
from taskwatcher.engine.settings import DEFAULT_RESERVATION_TTL, reservation_ttl_from_env
from taskwatcher.engine.store import open_store
from tests.helpers import BIN, run_cli


def usage_error(*args: str | os.PathLike) -> str:
    """Run twctl expecting a usage error; returns its last stderr line."""
    result = run_cli("twctl", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["feedback", "kill", "show"])
@pytest.mark.parametrize("taskid", ["99999999999999999999", "0", "-3"])
def test_task_ids_out_of_range_are_usage_errors(db_path: Path, command: str, taskid: str) -> None:
    assert "not a task id" in usage_error("--db", db_path, command, "--", taskid)


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["history", "--json"]])
def test_a_closed_pipe_ends_quietly(db_path: Path, args: list[str]) -> None:
    open_store(db_path).close()
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [BIN / "twctl", "--db", db_path, *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (0, "")


def test_watch_title_shows_brackets_in_the_path(tmp_path: Path) -> None:
    db = tmp_path / "a[/x].db"
    open_store(db).close()
    result = run_cli("twctl", "--db", db, "watch", "--once")
    assert result.returncode == 0, result.stderr
    assert "a[/x].db" in "".join(result.stdout.split())  # a long title wraps


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["watch", "--interval", "0"], "must be above 0"),
        (["history", "--limit", "-1"], "must be 1 or more"),
        (["history", "--limit", "0"], "must be 1 or more"),
        (["history", "--since", "inf"], "not a time"),
        (["clear", "--before", "nan"], "not a time"),
        (["history", "--since", "1e999"], "not a finite time"),
        (["kill", "1", "--wait", "1e999"], "not a finite number of seconds"),
    ],
)
def test_meaningless_numbers_are_usage_errors(
    db_path: Path, args: list[str], complaint: str
) -> None:
    assert complaint in usage_error("--db", db_path, *args)


@pytest.mark.parametrize("args", [["list", "--status", "gone"], ["history", "--outcome", "x"]])
def test_choice_errors_list_plain_names(db_path: Path, args: list[str]) -> None:
    message = usage_error("--db", db_path, *args)
    assert "RUNNING" in message or "COMPLETED" in message
    assert "Status." not in message and "<" not in message


@pytest.mark.parametrize("position", ["before", "after"])
def test_empty_db_path_is_a_usage_error(position: str, isolated_state: Path) -> None:
    args = ["--db", "", "list"] if position == "before" else ["list", "--db", ""]
    assert "empty path" in usage_error(*args)
    assert not isolated_state.exists()


def test_show_prints_json_and_yes_no_not_python_reprs(db_path: Path) -> None:
    run_cli("twrun", "--db", db_path, "--name", "argv", "--", "true", "a\x9bb")
    finished = run_cli("twctl", "--db", db_path, "show", "1").stdout
    assert '["true","a\\x9bb"]' in finished
    run_cli("twctl", "--db", db_path, "reserve")
    live = dict(
        line.split(maxsplit=1)
        for line in run_cli("twctl", "--db", db_path, "show", "2").stdout.splitlines()
    )
    assert (live["feedback"], live["unique"]) == ("no", "no")


def test_reservation_ttl_is_read_by_the_engine() -> None:
    assert reservation_ttl_from_env({}) == DEFAULT_RESERVATION_TTL
    assert reservation_ttl_from_env({"TASKWATCHER_RESERVATION_TTL": "0.5"}) == 0.5
    for bad in ("soon", "0", "-1", "inf", "nan", ""):
        with pytest.raises(InvalidRequest, match="TASKWATCHER_RESERVATION_TTL"):
            reservation_ttl_from_env({"TASKWATCHER_RESERVATION_TTL": bad})


#: Numbers int() and float() take but nobody types: Arabic-Indic and fullwidth digits, an
#: underscore, a plus sign, spaces.
NOT_ASCII_DIGITS = ["٣", "\uff13", "1_0", "+3", " 3", "3 "]


@pytest.mark.parametrize("command", ["feedback", "kill", "show"])
@pytest.mark.parametrize("taskid", NOT_ASCII_DIGITS)
def test_task_ids_take_only_ascii_digits(db_path: Path, command: str, taskid: str) -> None:
    with open_store(db_path) as store:  # tasks 1 to 10 exist: each reading would name one
        for _ in range(10):
            store.reserve()
    assert "not a task id" in usage_error("--db", db_path, command, "--", taskid)


@pytest.mark.parametrize("number", NOT_ASCII_DIGITS)
@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["history", "--limit"], "not a whole number"),
        (["watch", "--once", "--interval"], "not a number of seconds"),
        (["update", "--grace"], "not a number of seconds"),
        (["kill", "1", "--wait"], "not a number of seconds"),
        (["history", "--since"], "not a time"),
        (["clear", "--before"], "not a time"),
    ],
)
def test_counts_and_times_take_only_ascii_digits(
    db_path: Path, args: list[str], complaint: str, number: str
) -> None:
    assert complaint in usage_error("--db", db_path, *args, number)


@pytest.mark.parametrize("args", [["--taskid", "٣"], ["--timeout", "1_0"], ["--grace", "+3"]])
def test_twrun_takes_only_ascii_digits(db_path: Path, args: list[str]) -> None:
    result = run_cli("twrun", "--db", db_path, *args, "--", "true")
    assert result.returncode == 125 and "Traceback" not in result.stderr, result.stderr
    assert not db_path.exists()


def test_a_limit_beyond_sqlite_integers_means_every_row(db_path: Path) -> None:
    for _ in range(3):
        run_cli("twctl", "--db", db_path, "reserve", "--name", "gone")
    run_cli("twctl", "--db", db_path, "killall", "gone")
    result = run_cli("twctl", "--db", db_path, "history", "--json", "--limit", str(2**63))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 3
