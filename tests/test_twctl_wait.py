"""`twctl wait`: it blocks until tasks end, prints how they ended, and exits as their twrun did.

Real twrun and twctl processes on a real database. Tasks end when the test opens their gate
(a file appears), so a slow machine delays a test but never changes what it sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from taskwatcher.engine.store import open_store
from tests.fault_helpers import assert_one_line, live_row, reserve, twrun, wait_running
from tests.helpers import BIN, HISTORY_KEYS, run_cli, wait_for

EXIT_INTERRUPTED = 128 + signal.SIGINT
TERM = 128 + signal.SIGTERM

StartTask = Callable[..., tuple[int, subprocess.Popen[str]]]


def gated(gate: Path, then: str = "exit 0", first: str = "") -> list[str]:
    """A task that runs the shell words `first`, waits for `gate` to exist, then runs `then`."""
    return ["sh", "-c", f'{first}while [ ! -e "$0" ]; do sleep 0.05; done; {then}', str(gate)]


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """Where a file appears when the test lets its gated tasks end."""
    return tmp_path / "gate"


@pytest.fixture
def start_task(db_path: Path) -> Iterator[StartTask]:
    """start_task(*command, options=(), name="job"): a reserved task launched by twrun in the
    background, once its child runs; its id and twrun. Whatever still runs is stopped after."""
    runners: list[subprocess.Popen[str]] = []

    def start(
        *command: str, options: tuple[str | os.PathLike, ...] = (), name: str = "job"
    ) -> tuple[int, subprocess.Popen[str]]:
        taskid = reserve(db_path, "--name", name)
        runners.append(twrun(db_path, taskid, *options, command=command))
        wait_running(db_path, taskid)
        return taskid, runners[-1]

    yield start
    for runner in runners:
        if runner.poll() is None:
            runner.terminate()
        runner.communicate(timeout=30)


def start_wait(db: Path, *args: str | int) -> subprocess.Popen[str]:
    """`twctl wait ARGS` in the background, returned once its store is open: an end the test
    causes next is one the wait has to notice (or, at worst, finds as it starts waiting)."""
    argv = [BIN / "twctl", "--db", db, "wait", *args]
    waiter = subprocess.Popen(
        list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process = psutil.Process(waiter.pid)
    wait_for(lambda: waiter.poll() is not None or _has_open(process, db))
    return waiter


def _has_open(process: psutil.Process, path: Path) -> bool:
    try:
        return any(item.path == str(path) for item in process.open_files())
    except psutil.NoSuchProcess:
        return False


def finished(waiter: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of a background wait, once it has ended."""
    stdout, stderr = waiter.communicate(timeout=30)
    return waiter.returncode, stdout, stderr


def wait_now(db: Path, *args: str | int, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run_cli("twctl", "--db", db, "wait", *map(str, args), **kwargs)


@pytest.mark.parametrize(
    ("first", "then", "stop", "outcome", "code"),
    [
        ("", "exit 3", "gate", "FAILED", 3),
        ("", "", "kill", "KILLED", TERM),
        ("trap 'exit 5' TERM; ", "", "kill", "KILLED", 5),
        ("", "", "timeout", "TIMEOUT", 124),
    ],
    ids=["exit-3", "killed", "killed-trapping-sigterm", "timeout"],
)
def test_one_task_exits_with_what_twrun_exited_with(
    db_path: Path,
    tmp_path: Path,
    gate: Path,
    start_task: StartTask,
    first: str,
    then: str,
    stop: str,
    outcome: str,
    code: int,
) -> None:
    timed = ("--feedpath", tmp_path, "--timeout", "1.5", "--grace", "1")
    options = timed if stop == "timeout" else ()
    taskid, runner = start_task(*gated(gate, then or "exit 0", first), options=options)
    waiter = start_wait(db_path, taskid)
    if stop == "gate":
        gate.touch()
    elif stop == "kill":
        assert run_cli("twctl", "--db", db_path, "kill", taskid).returncode == 0
    assert finished(waiter) == (code, f"{taskid} {outcome} {code}\n", "")
    assert runner.wait(timeout=30) == code


def test_several_tasks_exit_0_only_if_all_completed(
    db_path: Path, gate: Path, start_task: StartTask
) -> None:
    first, _ = start_task(*gated(gate))
    failing, _ = start_task(*gated(gate, "exit 2"))
    second, _ = start_task(*gated(gate))
    all_completed = start_wait(db_path, second, first, second)  # each task once
    mixed = start_wait(db_path, failing, first)
    gate.touch()
    assert finished(all_completed) == (0, f"{second} COMPLETED 0\n{first} COMPLETED 0\n", "")
    assert finished(mixed) == (1, f"{failing} FAILED 2\n{first} COMPLETED 0\n", "")


def test_name_waits_for_the_live_tasks_of_that_name(
    db_path: Path, gate: Path, tmp_path: Path, start_task: StartTask
) -> None:
    first, _ = start_task(*gated(gate), name="batch")
    second, _ = start_task(*gated(gate, "exit 6"), name="batch")
    other, _ = start_task(*gated(tmp_path / "never"), name="other")
    waiter = start_wait(db_path, "--name", "batch")
    gate.touch()
    assert finished(waiter) == (1, f"{first} COMPLETED 0\n{second} FAILED 6\n", "")
    assert live_row(db_path, other) is not None
    result = wait_now(db_path, "--name", "batch")
    assert (result.returncode, result.stdout) == (1, "")
    assert assert_one_line(result.stderr, "twctl: ") == "twctl: no live task named 'batch'"


def test_a_timeout_exits_1_naming_the_tasks_still_running(
    db_path: Path, gate: Path, start_task: StartTask
) -> None:
    done = reserve(db_path)
    assert run_cli("twrun", "--db", db_path, "--taskid", done, "--", "true").returncode == 0
    running, _ = start_task(*gated(gate))
    started = time.monotonic()
    result = wait_now(db_path, done, running, "--timeout", "0.5")
    assert time.monotonic() - started >= 0.5
    assert (result.returncode, result.stdout) == (1, "")
    line = assert_one_line(result.stderr, "twctl: ")
    assert line == f"twctl: task(s) {running} still running after 0.5 s"


def test_a_reservation_is_waited_for_until_it_expires(db_path: Path) -> None:
    taskid = reserve(db_path)
    result = wait_now(db_path, taskid, "--timeout", "0")
    assert result.returncode == 1
    assert f"task(s) {taskid} still running" in result.stderr
    # Housekeeping during the wait expires it: the wait ends, as twrun would have, with 125.
    short_lived = {**os.environ, "TASKWATCHER_RESERVATION_TTL": "1.5"}
    result = wait_now(db_path, taskid, env=short_lived)
    assert (result.returncode, result.stdout) == (125, f"{taskid} EXPIRED 125\n")


def test_json_is_the_history_record_and_the_exit_code(
    db_path: Path, gate: Path, start_task: StartTask
) -> None:
    taskid, _ = start_task(*gated(gate, "exit 4"))
    waiter = start_wait(db_path, taskid, "--json")
    gate.touch()
    code, stdout, _ = finished(waiter)
    (record,) = json.loads(stdout)
    assert code == 4
    assert list(record)[: len(HISTORY_KEYS)] == HISTORY_KEYS and list(record)[-1] == "exit_code"
    assert (record["taskid"], record["outcome"], record["exit_code"]) == (taskid, "FAILED", 4)
    history = run_cli("twctl", "--db", db_path, "history", "--json").stdout
    assert json.loads(history) == [{key: record[key] for key in record if key != "exit_code"}]


def test_an_unknown_id_is_said_at_once(db_path: Path, gate: Path, start_task: StartTask) -> None:
    running, _ = start_task(*gated(gate))
    result = wait_now(db_path, running, 999, timeout=20)  # not after the running task's end
    assert (result.returncode, result.stdout) == (1, "")
    assert assert_one_line(result.stderr, "twctl: ") == "twctl: no task 999"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ([], "either task ids or --name NAME"),
        (["1", "--name", "job"], "either task ids or --name NAME"),
        (["0"], "not a task id"),
        (["1", "--timeout", "-1"], "must not be negative"),
        (["1", "--timeout", "soon"], "not a number of seconds"),
    ],
)
def test_bad_input_is_a_usage_error(db_path: Path, args: list[str], complaint: str) -> None:
    open_store(db_path).close()
    result = wait_now(db_path, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert complaint in result.stderr.strip().splitlines()[-1]


def test_a_task_whose_supervisor_died_ends_the_wait_lost(
    db_path: Path, gate: Path, start_task: StartTask
) -> None:
    taskid, runner = start_task(*gated(gate))
    waiter = start_wait(db_path, taskid)
    time.sleep(0.3)  # past the housekeeping twctl does before a command: found while waiting
    runner.send_signal(signal.SIGKILL)  # its child dies with it (the parent-death signal)
    code, stdout, stderr = finished(waiter)
    assert (code, stdout) == (125, f"{taskid} LOST 125\n")
    assert "Traceback" not in stderr


def test_the_wait_ends_soon_after_the_task(
    db_path: Path, gate: Path, start_task: StartTask
) -> None:
    """How soon is for `make bench`; here the bound only tells an end noticed from one
    found by the next periodic housekeeping (a second later)."""
    taskid, runner = start_task(*gated(gate))
    waiter = start_wait(db_path, taskid)
    gate.touch()
    runner.wait(timeout=30)
    ended = time.monotonic()
    waiter.wait(timeout=30)
    assert time.monotonic() - ended < 1.0
    assert finished(waiter) == (0, f"{taskid} COMPLETED 0\n", "")


def test_ctrl_c_leaves_quietly(db_path: Path, gate: Path, start_task: StartTask) -> None:
    taskid, _ = start_task(*gated(gate))
    waiter = start_wait(db_path, taskid)
    waiter.send_signal(signal.SIGINT)
    assert finished(waiter) == (EXIT_INTERRUPTED, "", "")


def test_the_store_wakes_a_waiter_on_each_commit_of_another_connection(db_path: Path) -> None:
    with open_store(db_path) as waiter, open_store(db_path) as writer:
        waiter.wait_for_change(0)  # whatever changed since the opening
        assert waiter.wait_for_change(0.1) is False
        for _ in range(20):  # commits closer together than a coarse mtime can tell apart
            writer.reserve("many")
            started = time.monotonic()
            assert waiter.wait_for_change(10) is True
            assert time.monotonic() - started < 5
        assert waiter.wait_for_change(0.1) is False
