"""`--json` on every twctl command that prints data, one shape for an ended task wherever it
appears; real twrun tasks on a real database. And `list --status` names the valid values."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fault_helpers import reserve, twctl, twrun, wait_running
from tests.helpers import HISTORY_KEYS, run_cli

TERM = 128 + signal.SIGTERM


def as_json(db: Path, *args: str) -> Any:
    return json.loads(twctl(db, *args, "--json"))


@pytest.fixture
def sleeper(db_path: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A running task named `sleeper` and its twrun, stopped after the test if still running."""
    taskid = reserve(db_path, "--name", "sleeper")
    runner = twrun(db_path, taskid, "--grace", "1", command=["sleep", "60"])
    wait_running(db_path, taskid)
    yield taskid, runner
    if runner.poll() is None:
        runner.terminate()
    runner.communicate(timeout=30)


def assert_ended_shape(record: dict[str, Any]) -> None:
    """An ended task: `history --json`'s keys first, `exit_code` last."""
    assert list(record)[: len(HISTORY_KEYS)] == HISTORY_KEYS
    assert list(record)[-1] == "exit_code"


def test_reserve_prints_an_object_with_the_id(db_path: Path) -> None:
    assert as_json(db_path, "reserve") == {"taskid": 1}
    assert as_json(db_path, "reserve", "--name", "x", "--unique") == {"taskid": 2}
    twctl(db_path, "reserve", "--name", "x", "--unique", "--json", code=1)  # no JSON on failure
    assert [task["taskid"] for task in as_json(db_path, "list")] == [1, 2]


def test_kill_prints_what_wait_and_history_say_of_the_end(
    db_path: Path, sleeper: tuple[int, subprocess.Popen[str]]
) -> None:
    taskid, runner = sleeper
    (killed,) = as_json(db_path, "kill", str(taskid))
    assert runner.wait(timeout=30) == TERM
    assert_ended_shape(killed)
    assert (killed["taskid"], killed["outcome"], killed["exit_code"]) == (taskid, "KILLED", TERM)
    waited = run_cli("twctl", "--db", db_path, "wait", str(taskid), "--json")
    assert waited.returncode == TERM and json.loads(waited.stdout) == [killed]
    (recorded,) = as_json(db_path, "history")
    assert recorded == {key: value for key, value in killed.items() if key != "exit_code"}


def test_killall_reports_each_task_of_the_name(
    db_path: Path, sleeper: tuple[int, subprocess.Popen[str]]
) -> None:
    running, _ = sleeper
    reserved = reserve(db_path, "--name", "sleeper")
    bystander = reserve(db_path, "--name", "other")
    ended = as_json(db_path, "killall", "sleeper")
    for record in ended:
        assert_ended_shape(record)
    outcomes = {record["taskid"]: (record["outcome"], record["exit_code"]) for record in ended}
    assert outcomes == {running: ("KILLED", TERM), reserved: ("EXPIRED", 125)}
    assert [task["taskid"] for task in as_json(db_path, "list")] == [bystander]


def test_update_prints_what_it_archived_and_how_many_are_live(
    db_path: Path, sleeper: tuple[int, subprocess.Popen[str]]
) -> None:
    assert as_json(db_path, "update") == {"archived": [], "live": 1}
    taskid, runner = sleeper
    waiting = reserve(db_path)  # before the loss: any command but update archives it quietly
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    done = as_json(db_path, "update")
    assert done["live"] == 1
    (lost,) = done["archived"]
    assert_ended_shape(lost)
    assert (lost["taskid"], lost["outcome"], lost["exit_code"]) == (taskid, "LOST", 125)
    assert lost["termerror"]
    assert [task["taskid"] for task in as_json(db_path, "list")] == [waiting]


@pytest.mark.parametrize("args", [["kill", "42"], ["killall", "nobody"]])
def test_a_failed_command_prints_no_json_and_changes_nothing(
    db_path: Path, args: list[str]
) -> None:
    reserve(db_path)
    before = db_path.read_bytes()
    assert twctl(db_path, *args, "--json", code=1) == ""
    assert db_path.read_bytes() == before


def test_log_names_the_task_and_its_log_as_history_does(db_path: Path) -> None:
    ran = run_cli("twrun", "--db", db_path, "--output", "log", "--", "printf", "one\\ntwo\\n")
    assert ran.returncode == 0, ran.stderr
    (recorded,) = as_json(db_path, "history")
    log = as_json(db_path, "log", str(recorded["taskid"]))
    assert log == {
        "taskid": recorded["taskid"],
        "logfile": recorded["logfile"],
        "lines": ["one", "two"],
    }


@pytest.mark.parametrize(
    ("status", "complaint"),
    [
        (
            "bogus",
            "'bogus' is not a live status:"
            " choose from RESERVED, RUNNING, SILENT, STALLED, RETRYING",
        ),
        (
            "Completed",
            "COMPLETED is the outcome of a finished task: see twctl history --outcome COMPLETED",
        ),
    ],
)
def test_list_status_names_the_valid_values(db_path: Path, status: str, complaint: str) -> None:
    result = run_cli("twctl", "--db", db_path, "list", "--status", status)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines()[-1].endswith(f"argument --status: {complaint}")
    assert not db_path.exists()
