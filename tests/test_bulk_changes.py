"""Bulk changes in batches: a long `clear` never makes a task's end wait past the busy timeout.

The busy timeout is set short for the test ($TASKWATCHER_BUSY_TIMEOUT), the history large
enough that deleting it in one transaction takes longer than that.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from taskwatcher.engine.store import open_store
from tests.fault_helpers import query, twctl
from tests.helpers import BIN, wait_for

ROWS = 100_000  # a clear of seconds: long enough to be interrupted, and to write during
BUSY = "0.3"

#: Reserves and cancels tasks until told to stop, with the short busy timeout; prints how many
#: writes succeeded and how many failed.
WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from taskwatcher.engine.errors import StoreError
    from taskwatcher.engine.store import open_store

    db, stop = sys.argv[1], Path(sys.argv[2])
    failed = done = 0
    with open_store(db) as store:
        while not stop.exists():
            try:
                store.cancel_reservation(store.reserve("writer"), "test")
                done += 1
            except StoreError as error:
                failed += 1
                print(error, file=sys.stderr)
            time.sleep(0.005)  # a task ending every few milliseconds
    print(done, failed)
""")


def big_history(db: Path) -> None:
    open_store(db).close()
    with sqlite3.connect(db) as raw:
        raw.executemany(
            "INSERT INTO history (taskid, taskname, endtime, duration, feedback, outcome)"
            " VALUES (?, 'old', ?, 0, 'null', 'COMPLETED')",
            ((taskid, float(taskid)) for taskid in range(1_000_000, 1_000_000 + ROWS)),
        )


def test_writers_never_wait_long_behind_a_clear(db_path: Path, tmp_path: Path) -> None:
    big_history(db_path)
    stop = tmp_path / "stop"
    env = {**os.environ, "TASKWATCHER_BUSY_TIMEOUT": BUSY}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, db_path, stop], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # A few seconds alone; many times that on a busy machine, which is not the point here.
        assert twctl(db_path, "clear", "--before", "1000000000", timeout=180) == (
            f"{ROWS} history row(s) removed\n"
        )
    finally:
        stop.touch()
        out, errors = writer.communicate(timeout=60)
    done, failed = map(int, out.split())
    assert failed == 0, errors
    assert done > 0
    assert query(db_path, "SELECT count(*) FROM history WHERE taskname = 'old'") == [(0,)]


def test_an_interrupted_clear_leaves_a_consistent_history_and_finishes_when_run_again(
    db_path: Path,
) -> None:
    big_history(db_path)
    clear = subprocess.Popen([BIN / "twctl", "--db", db_path, "clear"], stdout=subprocess.PIPE)
    wait_for(lambda: query(db_path, "SELECT count(*) FROM history")[0][0] < ROWS, interval=0.005)
    clear.send_signal(signal.SIGKILL)
    clear.wait(timeout=30)
    assert query(db_path, "PRAGMA integrity_check") == [("ok",)]
    ((left,),) = query(db_path, "SELECT count(*) FROM history")
    assert 0 < left < ROWS
    assert twctl(db_path, "clear") == f"{left} history row(s) removed\n"
