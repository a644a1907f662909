"""Several real processes on one database file: unique reservations and concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from taskwatcher.engine.store import open_store

PROCESSES = 8

# Each process opens its own Store, says it is ready, waits for the go file, then acts.
RESERVE_UNIQUE = """
import sys, time, orjson
from pathlib import Path
from taskwatcher.engine.errors import UniqueConflict
from taskwatcher.engine.store import open_store

db, ready, go, open_first = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
store = open_store(db) if open_first else None
ready.touch()
while not go.exists():
    time.sleep(0.001)
store = store or open_store(db)
try:
    print(orjson.dumps({"won": store.reserve("nightly", unique=True)}).decode())
except UniqueConflict as conflict:
    print(orjson.dumps({"holder": conflict.holder, "message": str(conflict)}).decode())
"""

LIFECYCLES = """
import os, socket, sys, time
from pathlib import Path
import psutil
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.ownership import new_token, token_digest
from taskwatcher.engine.records import Ending, Launch
from taskwatcher.engine.store import open_store

db, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
store = open_store(db)
created = psutil.Process().create_time()
ready.touch()
while not go.exists():
    time.sleep(0.001)
for _ in range(25):
    taskid = store.reserve("load")
    token_hash = token_digest(new_token())
    store.claim(taskid, Launch(
        supervisor_pid=os.getpid(), supervisor_ctime=created, host=socket.gethostname(),
        token_hash=token_hash, uid=os.getuid(), timeout=5,
    ))
    store.set_child(taskid, token_hash, os.getpid(), created)
    store.heartbeat(taskid, token_hash, time.time())
    store.grade(taskid, token_hash, "SILENT")
    store.heartbeat(taskid, token_hash, time.time(), feedback={"pid": str(os.getpid())})
    store.archive(taskid, Ending(Status.COMPLETED, exitcode=0), token_hash=token_hash)
print("done")
"""


def run_together(tmp_path: Path, script: str, db_path: Path | str, *extra: str) -> list[str]:
    """Start PROCESSES interpreters, release them at once, and return their outputs."""
    go = tmp_path / "go"
    readies = [tmp_path / f"ready-{index}" for index in range(PROCESSES)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(db_path), str(ready), str(go), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready in readies
    ]
    deadline = time.monotonic() + 60
    while not all(ready.exists() for ready in readies) and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()
    outputs = []
    for child in children:
        stdout, stderr = child.communicate(timeout=60)
        assert child.returncode == 0, stderr
        outputs.append(stdout)
    return outputs


def unique_race(tmp_path: Path, db_path: Path, open_first: bool) -> None:
    results = [
        orjson.loads(out)
        for out in run_together(tmp_path, RESERVE_UNIQUE, db_path, str(int(open_first)))
    ]
    winners = [result["won"] for result in results if "won" in result]
    assert len(winners) == 1
    losers = [result for result in results if "holder" in result]
    assert len(losers) == PROCESSES - 1
    assert {loser["holder"] for loser in losers} == set(winners)
    assert losers[0]["message"] == f"name 'nightly' is held by live task {winners[0]}"


def test_one_of_many_processes_wins_a_unique_name(tmp_path, db_path):
    open_store(db_path).close()
    unique_race(tmp_path, db_path, open_first=True)


def test_processes_creating_the_database_together_still_agree(tmp_path, db_path):
    unique_race(tmp_path, db_path, open_first=False)


def test_concurrent_writers_never_see_a_locked_database(tmp_path, db_path):
    open_store(db_path).close()
    assert run_together(tmp_path, LIFECYCLES, db_path) == ["done\n"] * PROCESSES
    with open_store(db_path) as store:
        history = store.history()
        assert store.live_count() == 0
    assert len(history) == 25 * PROCESSES
    assert len({record.taskid for record in history}) == 25 * PROCESSES
    assert {record.outcome for record in history} == {"COMPLETED"}
