"""The original's later spellings (`control.py task --reserve`, `history --list`, `database
--initialize`, `--taskname`, `-d`) run unchanged against twctl and twrun, real processes on a
real database, and mean what twctl's own subcommands mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fault_helpers import twctl
from tests.helpers import HISTORY_KEYS, run_cli
from tests.run_helpers import PY, history, script

#: A task that tells its supervisor something twrun ignores, and logs at debug level.
SAYS_UNKNOWN = """\
import os, socket
address = os.environ["NOTIFY_SOCKET"].replace("@", "\\0", 1)
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
    client.sendto(b"FLAVOUR=vanilla", address)
"""


def ids(db: Path, *args: str) -> list[int]:
    """The task ids a twctl listing prints as JSON."""
    return [record["taskid"] for record in json.loads(twctl(db, *args, "--json"))]


def test_task_reserve_list_feedback_and_kill(db_path: Path) -> None:
    taskid = twctl(db_path, "task", "--reserve", "--taskname", "nightly", "--info1", "lab 3")
    assert taskid == "1\n"
    (listed,) = json.loads(twctl(db_path, "task", "--list", "--json"))
    assert (listed["taskid"], listed["name"], listed["info1"]) == (1, "nightly", "lab 3")
    assert twctl(db_path, "task", "--list") == twctl(db_path, "list")
    assert (
        "task 1 is reserved" in run_cli("twctl", "--db", db_path, "task", "--feedback", "1").stderr
    )
    (killed,) = json.loads(twctl(db_path, "task", "--kill", "1", "--json"))
    assert (killed["taskid"], killed["outcome"]) == (1, "EXPIRED")


def test_unique_reservations_and_killall_by_name(db_path: Path) -> None:
    twctl(db_path, "task", "--taskname", "solo", "--unique", "--reserve")
    refused = twctl(db_path, "task", "--reserve", "--taskname", "solo", code=1)
    assert refused == ""
    assert twctl(db_path, "task", "--killall", "solo") == "task 1 (solo): EXPIRED\n"
    assert twctl(db_path, "task", "--list", "--json") == "[]\n"


def test_history_list_is_json_and_human_the_table(db_path: Path) -> None:
    run_cli("twrun", "--db", db_path, "--taskname", "first", "--", "true")
    run_cli("twrun", "--db", db_path, "--taskname", "second", "--", "false")
    listed = json.loads(twctl(db_path, "history", "--list"))
    assert [record["taskname"] for record in listed] == ["second", "first"]
    assert list(listed[0])[: len(HISTORY_KEYS)] == HISTORY_KEYS
    assert twctl(db_path, "history", "--list", "--human") == twctl(db_path, "history")
    assert "2 history row(s) removed" in twctl(db_path, "history", "--clear")
    assert twctl(db_path, "history", "--list") == "[]\n"


def test_database_initialize_and_update(db_path: Path) -> None:
    twctl(db_path, "task", "--reserve")
    assert twctl(db_path, "database", "--update") == "0 task(s) archived, 1 live\n"
    twctl(db_path, "database", "--initialize", code=1)  # refused while a task is live
    twctl(db_path, "task", "--kill", "1")
    assert "initialized" in twctl(db_path, "database", "--initialize")
    assert twctl(db_path, "history", "--list") == "[]\n"


@pytest.mark.parametrize(
    "args",
    [
        ["-d", "task", "--list"],
        ["task", "-d", "--list"],
        ["task", "--list", "-d"],
        ["-dd", "list"],
        ["list", "-d"],
        ["--debug", "history", "--list"],
    ],
)
def test_debug_goes_before_or_after_the_command(empty_db: Path, args: list[str]) -> None:
    assert twctl(empty_db, *args) in ("No tasks.\n", "[]\n")


def test_taskname_wherever_a_name_is_taken(db_path: Path) -> None:
    twctl(db_path, "reserve", "--taskname", "a")
    twctl(db_path, "reserve", "--name", "b")
    assert ids(db_path, "list", "--taskname", "b") == [2]
    assert twctl(db_path, "wait", "--taskname", "b", "--timeout", "0", code=1) == ""
    twctl(db_path, "killall", "a")
    assert ids(db_path, "history", "--taskname", "a") == [1]


def test_twrun_takes_taskname_and_d(db_path: Path, tmp_path: Path) -> None:
    """`-d` raises twrun's logging as `-v` does: twice shows the debug records."""
    task = [PY, str(script(tmp_path, "says.py", SAYS_UNKNOWN))]
    quiet = run_cli("twrun", "--db", db_path, "--taskname", "quiet", "--", *task)
    loud = run_cli("twrun", "--db", db_path, "-dd", "--taskname", "loud", "--", *task)
    assert (quiet.returncode, loud.returncode) == (0, 0), loud.stderr
    ignored = "twrun: debug: notify: ignored FLAVOUR=vanilla"
    assert ignored in loud.stderr and ignored not in quiet.stderr
    assert (history(db_path, 1).taskname, history(db_path, 2).taskname) == ("quiet", "loud")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["task"], "twctl task: give one of --reserve, --list, --kill ID, --killall NAME or"),
        (["task", "--json"], "twctl task: give one of"),
        (["database"], "twctl database: give one of --initialize or --update"),
        (["task", "--reserve", "--list"], "unrecognized arguments: --list"),
        (["task", "--kill"], "required: taskid"),
        (["task", "--kill", "abc"], "not a task id"),
    ],
)
def test_a_group_without_one_operation_is_a_usage_error(
    db_path: Path, args: list[str], complaint: str
) -> None:
    twctl(db_path, "reserve")
    before = db_path.read_bytes()
    result = run_cli("twctl", "--db", db_path, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert complaint in result.stderr.splitlines()[-1]
    assert db_path.read_bytes() == before


def test_the_value_of_an_operation_may_follow_an_equals_sign(db_path: Path) -> None:
    twctl(db_path, "reserve", "--name=-dashed")
    assert twctl(db_path, "task", "--killall=-dashed") == "task 1 (-dashed): EXPIRED\n"
    twctl(db_path, "reserve")
    assert twctl(db_path, "task", "--kill=2") == "task 2 (-): EXPIRED\n"
