"""PID reuse: a record whose pid now names an unrelated process never gets that process signalled.

Reuse is simulated by editing the record (plain SQL) to the pid of a live process the test
started, while the recorded create times stay those of the task's own processes. The stranger
is a `sleep`, which SIGTERM, SIGKILL and SIGUSR1 would all end: still running afterwards means
it received none of them.
"""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from tests.fault_helpers import (
    gone,
    kill_at_end,
    query,
    reserve,
    runs,
    twctl,
    twctl_json,
    twrun,
    wait_running,
)
from tests.helpers import wait_for


def orphaned_task(db: Path, name: str) -> tuple[int, dict]:
    """A task whose supervisor was SIGKILLed (its child died with it); returns id and row."""
    taskid = reserve(db, "--name", name)
    runner = twrun(db, taskid, "--grace", "1", command=["sleep", "60"])
    row = wait_running(db, taskid)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    wait_for(lambda: gone(row["pid"]))
    return taskid, row


def point_row_at(db: Path, taskid: int, **columns: int) -> None:
    assignments = ", ".join(f"{column} = ?" for column in columns)
    query(db, f"UPDATE tasks SET {assignments} WHERE id = ?", (*columns.values(), taskid))


def lost_record(db: Path, taskid: int) -> dict:
    (record,) = twctl_json(db, "history")
    assert (record["taskid"], record["outcome"]) == (taskid, "LOST")
    return record


@pytest.mark.parametrize("command", ["kill", "killall", "update"])
def test_reused_task_pid_is_not_signalled(
    db_path: Path, stranger: psutil.Process, command: str
) -> None:
    taskid, _ = orphaned_task(db_path, "recycled")
    point_row_at(db_path, taskid, pid=stranger.pid, pgid=stranger.pid)
    target = {"kill": str(taskid), "killall": "recycled", "update": None}[command]
    output = twctl(db_path, command, *([target] if target else []))
    assert f"task {taskid} (recycled): LOST" in output
    assert runs(stranger)
    assert lost_record(db_path, taskid)["termsignal"] is None  # nothing of the task was left


def test_reused_supervisor_pid_gets_no_sigusr1(db_path: Path, stranger: psutil.Process) -> None:
    """`kill` is the one path that signals a supervisor (SIGUSR1: read your kill request)."""
    taskid, _ = orphaned_task(db_path, "unsupervised")
    point_row_at(db_path, taskid, supervisor_pid=stranger.pid)
    output = twctl(db_path, "kill", str(taskid), "--wait", "5")
    assert f"task {taskid} (unsupervised): LOST" in output
    assert runs(stranger)
    assert f"pid {stranger.pid}" in lost_record(db_path, taskid)["termerror"]


def test_kill_through_a_live_supervisor_ignores_the_edited_pid(
    db_path: Path, stranger: psutil.Process, request: pytest.FixtureRequest
) -> None:
    taskid = reserve(db_path, "--name", "edited")
    runner = twrun(db_path, taskid, "--grace", "1", command=["sleep", "60"])
    child = kill_at_end(request, wait_running(db_path, taskid)["pid"])
    point_row_at(db_path, taskid, pid=stranger.pid, pgid=stranger.pid)
    assert f"task {taskid} (edited): KILLED" in twctl(db_path, "kill", str(taskid))
    assert runner.wait(timeout=10) == 128 + signal.SIGTERM
    assert not runs(child)
    assert runs(stranger)


def test_timeout_kills_the_supervisors_own_child_not_the_recorded_pid(
    db_path: Path, tmp_path: Path, stranger: psutil.Process, request: pytest.FixtureRequest
) -> None:
    """The supervisor stops its child by the identity it holds in memory, never by the row."""
    stop = tmp_path / "stop"
    beats_until_stop = (
        f'while [ ! -e {stop} ]; do echo "[beat]" >> "$TASKWATCHER_FEEDBACK"; sleep 0.1; done;'
        " sleep 60"
    )
    taskid = reserve(db_path)
    runner = twrun(
        db_path, taskid, "--feedpath", tmp_path, "--timeout", "1", "--grace", "1",
        command=["sh", "-c", beats_until_stop],
    )  # fmt: skip
    child = kill_at_end(request, wait_running(db_path, taskid)["pid"])
    point_row_at(db_path, taskid, pid=stranger.pid, pgid=stranger.pid)
    stop.touch()
    assert runner.wait(timeout=20) == 124
    assert not runs(child)
    assert runs(stranger)
    (record,) = twctl_json(db_path, "history")
    assert record["outcome"] == "TIMEOUT"
