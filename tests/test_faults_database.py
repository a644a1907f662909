"""The database pulled from under running tasks: deleted, replaced, re-initialised, full,
read-only. Commands fail with one line, running tasks stay supervised to their end and leave
no process behind, twrun says 125 when it could not record an end, and history written
before the fault stays.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fault_helpers import (
    assert_one_line,
    group_members,
    kill_at_end,
    live_row,
    query,
    reserve,
    stop_between_writes,
    twctl,
    twctl_json,
    twrun,
    wait_running,
)
from tests.helpers import BIN, run_cli, wait_for


def history_before_the_fault(db: Path) -> list[dict]:
    """A finished task in history, to be found intact after the fault."""
    assert run_cli("twrun", "--db", db, "--name", "before", "--", "true").returncode == 0
    return twctl_json(db, "history")


def gated_task(db: Path, go: Path, *options: str | Path, request: pytest.FixtureRequest):
    """A running task that ends by itself once `go` exists; returns (taskid, runner, row)."""
    taskid = reserve(db, "--name", "gated")
    script = f"sleep 60 & while [ ! -e {go} ]; do sleep 0.05; done; kill $!"
    runner = twrun(db, taskid, "--grace", "1", *options, command=["sh", "-c", script])
    row = wait_running(db, taskid)
    kill_at_end(request, row["pid"])
    return taskid, runner, row


def not_recorded(runner: subprocess.Popen, taskid: int, outcome: str) -> str:
    """twrun's exit when it could not record the end: 125, warnings, and one final line."""
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 125, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert all(line.startswith("twrun: warning: ") for line in lines[:-1]), stderr
    assert lines[-1].startswith(f"twrun: task {taskid} ended {outcome} ")
    assert "but was not recorded: " in lines[-1]
    return lines[-1]


def test_database_deleted_while_a_task_runs(
    db_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    go = tmp_path / "go"
    taskid, runner, row = gated_task(db_path, go, request=request)
    for suffix in ("", "-journal"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    go.touch()
    assert not_recorded(runner, taskid, "COMPLETED").endswith("was deleted or replaced")
    assert group_members(row["pgid"]) == []
    assert not db_path.exists()  # nor was a new one made


def test_database_replaced_while_a_task_runs(
    db_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Replaced the way a backup is restored: the file, its journal dropped."""
    backup = tmp_path / "backup.db"
    restored = history_before_the_fault(backup)
    go = tmp_path / "go"
    taskid, runner, row = gated_task(db_path, go, request=request)
    os.replace(backup, db_path)
    Path(f"{db_path}-journal").unlink(missing_ok=True)
    go.touch()
    assert not_recorded(runner, taskid, "COMPLETED").endswith("was deleted or replaced")
    assert group_members(row["pgid"]) == []
    assert twctl_json(db_path, "history") == restored
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]


def test_reinitialised_database_whose_ids_start_again(
    db_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A database emptied under a running task hands its id to a newcomer: not our row.

    `init --force` keeps the id sequence, so the test rewinds it, as a database restored
    from a copy made before the task was reserved would.
    """
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    errors = tmp_path / "twrun.err"
    beats = 'sleep 60 & while :; do echo "[beat]" >> "$TASKWATCHER_FEEDBACK"; sleep 0.1; done'
    taskid = reserve(db_path, "--name", "first")
    with open(errors, "w") as stderr:
        runner = twrun(
            db_path, taskid, "--feedpath", feeds, "--timeout", "30", "--grace", "1",
            command=["sh", "-c", beats], stderr=stderr,
        )  # fmt: skip
    pgid = wait_running(db_path, taskid)["pgid"]
    wait_for(lambda: len(group_members(pgid)) >= 2)
    stop_between_writes(runner, db_path)  # so that it first looks again once the id is taken
    twctl(db_path, "init", "--force")
    query(db_path, "UPDATE sqlite_sequence SET seq = ? WHERE name = 'tasks'", (taskid - 1,))
    assert reserve(db_path, "--name", "newcomer") == taskid
    newcomer = twrun(db_path, taskid, "--grace", "1", command=["sleep", "60"])
    kill_at_end(request, wait_running(db_path, taskid)["pid"])
    runner.send_signal(signal.SIGCONT)
    wait_for(lambda: "belongs to another task" in errors.read_text())
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 125
    last = errors.read_text().splitlines()[-1]
    assert last.startswith(f"twrun: task {taskid} ended KILLED (status 143) but was not recorded")
    assert group_members(pgid) == []
    row = live_row(db_path, taskid)
    assert (row["name"], row["status"]) == ("newcomer", "RUNNING")
    # Its heartbeat, if recorded yet, is the newcomer's own (the creation of its feedback
    # file, which `sleep` never writes), never one of the first task's.
    assert row["heartbeat"] in (None, os.stat(row["feedpath"]).st_mtime)
    assert row["supervisor_pid"] == newcomer.pid
    assert twctl_json(db_path, "history") == []
    assert "KILLED" in twctl(db_path, "kill", str(taskid))
    newcomer.communicate(timeout=30)


def no_file_growth() -> None:
    """A full disk, as the process sees it: every write past offset 0 fails with EFBIG.

    Python ignores SIGXFSZ at start-up, so the error reaches the code instead of killing it.
    """
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_disk_full_while_a_task_runs(
    db_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    before = history_before_the_fault(db_path)
    go = tmp_path / "go"
    taskid, runner, row = gated_task(
        db_path, go, "--feedpath", tmp_path, "--timeout", "30", request=request
    )
    resource.prlimit(runner.pid, resource.RLIMIT_FSIZE, (0, 0))
    (tmp_path / f"feedback_{taskid}.log").write_text("[step]1\n")  # a heartbeat to record
    result = run_cli("twctl", "--db", db_path, "reserve", preexec_fn=no_file_growth)
    assert result.returncode == 2
    assert "disk I/O error" in assert_one_line(result.stderr, "twctl: ")
    go.touch()
    assert "disk I/O error" in not_recorded(runner, taskid, "COMPLETED")
    assert group_members(row["pgid"]) == []
    assert f"task {taskid} (gated): LOST" in twctl(db_path, "update")
    assert twctl_json(db_path, "history")[1:] == before


def test_read_only_database_folder(db_path: Path, tmp_path: Path, unprivileged: list[str]) -> None:
    before = history_before_the_fault(db_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    marker = elsewhere / "launched"
    tmp_path.chmod(0o500)  # the folder of db_path
    try:
        for command, code in (
            (["twctl", "clear"], 2),
            (["twctl", "reserve"], 2),
            (["twrun", "--", "touch", marker], 125),
        ):
            argv = [*unprivileged, BIN / command[0], "--db", db_path, *command[1:]]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert result.returncode == code, result.stderr
            line = assert_one_line(result.stderr, f"{command[0]}: ")
            assert line.endswith("database folder is not writable")
    finally:
        tmp_path.chmod(0o700)
    assert not marker.exists()
    assert twctl_json(db_path, "history") == before


def test_folders_made_read_only_while_a_task_runs(
    db_path: Path, tmp_path: Path, unprivileged: list[str], request: pytest.FixtureRequest
) -> None:
    """The open database goes on working; the feedback file that cannot go stays, with a word."""
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    go = tmp_path / "go"
    taskid = reserve(db_path)
    reports = (
        f'echo "[step]done" > "$TASKWATCHER_FEEDBACK"; while [ ! -e {go} ]; do sleep 0.05; done'
    )
    argv = [
        *unprivileged, BIN / "twrun", "--db", db_path, "--taskid", str(taskid),
        "--feedpath", feeds, "--", "sh", "-c", reports,
    ]  # fmt: skip
    runner = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    kill_at_end(request, wait_running(db_path, taskid)["pid"])
    feedback_file = feeds / f"feedback_{taskid}.log"
    wait_for(feedback_file.exists)
    for folder in (tmp_path, feeds):
        folder.chmod(0o500)
    try:
        go.touch()
        _, stderr = runner.communicate(timeout=30)
    finally:
        for folder in (tmp_path, feeds):
            folder.chmod(0o700)
    assert runner.returncode == 0, stderr
    assert stderr.splitlines() == [
        f"twrun: warning: cannot remove the feedback file {feedback_file}: Permission denied"
    ]
    assert feedback_file.exists()
    (record,) = twctl_json(db_path, "history")
    assert (record["outcome"], record["feedback"]) == ("COMPLETED", {"step": "done"})


def test_leftover_that_cannot_be_removed_launches_nothing(db_path: Path, tmp_path: Path) -> None:
    """A feedback path that cannot be cleared could pose as a heartbeat: twrun launches nothing.

    The reservation was already claimed, so the task ends in history as FAILED.
    """
    taskid = reserve(db_path)
    (tmp_path / f"feedback_{taskid}.log").mkdir()
    marker = tmp_path / "launched"
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", tmp_path,
        "--", "touch", marker,
    )  # fmt: skip
    assert result.returncode == 125
    assert "cannot remove the old feedback file" in assert_one_line(result.stderr, "twrun: ")
    assert not marker.exists()
    assert live_row(db_path, taskid) is None
    (record,) = twctl_json(db_path, "history")
    assert (record["taskid"], record["outcome"], record["exitcode"]) == (taskid, "FAILED", 125)
    assert record["termerror"].startswith("cannot remove the old feedback file")


def _truncate(path: Path) -> None:
    os.truncate(path, 0)


def _garble(path: Path) -> None:
    path.write_bytes(os.urandom(max(path.stat().st_size, 4096)))


def _make_immutable(path: Path) -> None:
    subprocess.run(["chattr", "+i", path], check=True, capture_output=True)


DAMAGE = {"truncated": _truncate, "garbled": _garble, "immutable": _make_immutable}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_database_files_never_kill_a_healthy_task(
    db_path: Path, tmp_path: Path, damage: str, request: pytest.FixtureRequest
) -> None:
    """Every file of the database (`-shm` too, where WAL would map one) damaged under twrun.

    The task must go on to its own end: twrun exits with its status, or 125 saying how it
    ended when that could not be recorded; never a signal of its own (SIGBUS).
    """
    if damage == "immutable" and shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    go, finished = tmp_path / "go", tmp_path / "finished"
    taskid = reserve(db_path, "--name", "healthy")
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; touch {finished}"
    runner = twrun(db_path, taskid, "--grace", "1", command=["sh", "-c", script])
    kill_at_end(request, wait_running(db_path, taskid)["pid"])
    files = [path for path in tmp_path.glob("tasks.db*") if path.is_file()]
    assert db_path in files
    request.addfinalizer(lambda: subprocess.run(["chattr", "-i", *files], capture_output=True))
    for path in files:
        DAMAGE[damage](path)
    go.touch()
    _, stderr = runner.communicate(timeout=30)
    assert "Traceback" not in stderr
    assert runner.returncode in (0, 125), stderr
    assert finished.exists()  # the task was never killed
    if runner.returncode == 125:
        assert stderr.splitlines()[-1].startswith(f"twrun: task {taskid} ended COMPLETED ")


#: Another program: switches the database to WAL, keeps it open, and when told truncates the
#: -shm file (then leaves without closing, which would touch the truncated file itself).
SWITCH_TO_WAL_THEN_TRUNCATE = """
import os, sqlite3, sys
db = sys.argv[1]
other = sqlite3.connect(db, isolation_level=None)
print(other.execute("PRAGMA journal_mode = WAL").fetchone()[0], flush=True)
other.execute("SELECT count(*) FROM tasks").fetchone()
sys.stdin.readline()
os.truncate(db + "-shm", 0)
os._exit(0)
"""


def test_a_switch_to_wal_under_a_running_supervisor_cannot_crash_it(
    db_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Another program switches the file to WAL and damages its -shm: twrun refuses WAL.

    It never maps the -shm, so it survives, keeps supervising and says the end was not
    recorded.
    """
    go, finished = tmp_path / "go", tmp_path / "finished"
    taskid = reserve(db_path, "--name", "healthy")
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; touch {finished}"
    runner = twrun(db_path, taskid, "--grace", "1", command=["sh", "-c", script])
    kill_at_end(request, wait_running(db_path, taskid)["pid"])
    other = subprocess.Popen(
        [sys.executable, "-c", SWITCH_TO_WAL_THEN_TRUNCATE, db_path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert other.stdout.readline() == "wal\n"
    time.sleep(1.5)  # the supervisor reads its row once a second: it meets WAL now
    other.communicate("truncate\n", timeout=30)
    time.sleep(1.2)
    go.touch()
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 125, stderr
    assert finished.exists()
    assert "switched to WAL mode by another program" in stderr
    assert stderr.splitlines()[-1].startswith(f"twrun: task {taskid} ended COMPLETED ")
