"""A supervisor that dies without warning: its task's processes and its record survive it sanely.

SIGKILL is the fault: no handler runs, so whatever the code does on a normal exit is skipped.
"""

from __future__ import annotations

import random
import signal
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.store import open_store
from tests.fault_helpers import (
    PY,
    gone,
    group_members,
    kill_at_end,
    live_row,
    places,
    query,
    reserve,
    twctl,
    twctl_json,
    twrun,
    wait_running,
)
from tests.helpers import wait_for
from tests.store_helpers import TOKEN_HASH, claim, finish

#: Opens the store, makes it SIGKILL its own process at the N-th SQL statement, archives.
#: With N = 0 nothing is killed and the script prints how many statements archiving took.
ARCHIVE_UNTIL_KILLED = textwrap.dedent("""
    import os, signal, sys
    from taskwatcher.engine.lifecycle import Status
    from taskwatcher.engine.records import Ending
    from taskwatcher.engine.store import open_store

    db, taskid, kill_at, token_hash = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = open_store(db)
    statements = 0

    def count_or_die(sql):
        global statements
        statements += 1
        if statements == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    store._db._db.set_trace_callback(count_or_die)  # the sqlite connection itself
    store.archive(taskid, Ending(Status.COMPLETED, exitcode=0), token_hash=token_hash)
    print(statements)
""")


@pytest.mark.parametrize("command", ["update", "list"])
def test_lost_supervisor_leaves_no_process_of_its_group(
    db_path: Path, command: str, request: pytest.FixtureRequest
) -> None:
    taskid = reserve(db_path, "--name", "family")
    runner = twrun(
        db_path, taskid, "--grace", "1", command=["sh", "-c", "sleep 60 & sleep 60; wait"]
    )
    row = wait_running(db_path, taskid)
    pgid = row["pgid"]
    members = wait_for(lambda: len(group_members(pgid)) == 3 and group_members(pgid))
    for pid in members:
        kill_at_end(request, pid)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    # The death signal reaches the direct child only: its two children outlive the supervisor.
    wait_for(lambda: gone(row["pid"]))
    assert len(group_members(pgid)) == 2
    output = twctl(db_path, command)
    assert group_members(pgid) == []
    if command == "update":
        assert f"task {taskid} (family): LOST" in output
    (record,) = twctl_json(db_path, "history")
    assert (record["taskid"], record["outcome"]) == (taskid, "LOST")
    assert record["termsignal"] == "SIGTERM"


def test_archive_killed_at_every_statement_leaves_one_row(db_path: Path, tmp_path: Path) -> None:
    script = tmp_path / "archive_until_killed.py"
    script.write_text(ARCHIVE_UNTIL_KILLED)
    with open_store(db_path) as store:

        def started_task() -> int:
            taskid = store.reserve("victim")
            claim(store, taskid, pid=1)
            store.heartbeat(taskid, TOKEN_HASH, time.time(), feedback={"step": "last"})
            return taskid

        def archive(taskid: int, kill_at: int) -> subprocess.CompletedProcess[str]:
            argv = [PY, script, db_path, str(taskid), str(kill_at), TOKEN_HASH]
            return subprocess.run(argv, capture_output=True, text=True, timeout=30)

        counted = started_task()
        result = archive(counted, 0)
        assert result.returncode == 0, result.stderr
        statements = int(result.stdout)
        assert statements >= 3  # BEGIN, the writes, COMMIT: else the loop below proves little
        assert places(db_path, counted) == (0, 1)
        killed = []
        for kill_at in range(1, statements + 1):
            taskid = started_task()
            assert archive(taskid, kill_at).returncode == -signal.SIGKILL
            assert places(db_path, taskid) in ((1, 0), (0, 1)), f"killed at statement {kill_at}"
            assert query(db_path, "PRAGMA integrity_check") == [("ok",)]
            killed.append(taskid)
        # Each task is still whole where it is: archiving it now completes it.
        for taskid in killed:
            if places(db_path, taskid) == (1, 0):
                assert store.load_feedback(taskid) == {"step": "last"}
                finish(store, taskid, Status.LOST)
            assert places(db_path, taskid) == (0, 1)
    assert query(db_path, "SELECT count(*) FROM feedbacks") == [(0,)]


def test_twrun_killed_around_its_end_leaves_each_task_in_one_place(
    db_path: Path, tmp_path: Path
) -> None:
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    # From the last act to its exit twrun needs some 70 ms idle, several times that when busy.
    delays = [step * 0.015 for step in range(20)]
    random.Random(6).shuffle(delays)
    with open_store(db_path) as store:
        taskids = [store.reserve("brief") for _ in delays]

    def run_and_kill(taskid: int, delay: float) -> None:
        done = tmp_path / f"done_{taskid}"
        last_act = f'echo "[step]{taskid}" > "$TASKWATCHER_FEEDBACK"; : > {done}'
        runner = twrun(db_path, taskid, "--feedpath", feeds, command=["sh", "-c", last_act])
        wait_for(done.exists, interval=0.001)
        time.sleep(delay)
        runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=20)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(run_and_kill, taskids, delays))
    twctl(db_path, "update")
    for taskid in taskids:
        live, ended = places(db_path, taskid)
        assert live + ended == 1, f"task {taskid}"
        if live:  # killed between launching the command and recording the launch
            assert live_row(db_path, taskid)["status"] == "RESERVED"
    outcomes = {record["outcome"] for record in twctl_json(db_path, "history")}
    assert outcomes <= {"COMPLETED", "LOST"}


def test_kill_requests_arriving_as_the_task_ends_cost_neither_record_nor_status(
    db_path: Path,
) -> None:
    """`twctl kill` signals a supervisor it saw running, which may be ending by then."""
    taskid = reserve(db_path)
    runner = twrun(db_path, taskid, command=["sleep", "0.5"])
    wait_running(db_path, taskid)
    while runner.poll() is None:
        runner.send_signal(signal.SIGUSR1)  # "read your kill request": there is none
        time.sleep(0.001)
    assert runner.returncode == 0, runner.stderr.read()
    assert places(db_path, taskid) == (0, 1)
