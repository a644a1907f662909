"""`twctl wait`: how soon it returns after the task it waits for ends, and what waiting costs.

A task's child stamps CLOCK_MONOTONIC (system-wide on Linux) and the wall clock, then
_exit()s; a `twctl wait ID --json` started well before blocks on it. This process wait4()s on
the wait and reads the monotonic clock when it returns: the delay a shell sees, interpreter
shutdown included. Split at the end twrun records (history's `endtime`, printed by the wait):
twrun's share, then the wait's own. Baseline: `python -c pass`, measured in the same run.
Then the CPU a waiting `twctl wait` uses, and one look at the database against the
`PRAGMA data_version` query it could have used instead.

Targets: child's end to the wait's exit under 100 ms (median); a waiting wait under 1% of one
core.
"""

from __future__ import annotations

import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import psutil

from bench.measure import median_of, seconds, show, target, wall_times
from bench.twrun import STAMP_THEN_EXIT, TWCTL, TWRUN, reserve, stop_if_running, wait_for_end
from taskwatcher.engine.sqlite_db import CHANGE_POLL
from taskwatcher.engine.store import open_store

RUNS = 10
BASELINE_RUNS = 15
#: How long each task runs: long enough for the wait to be settled in its loop at the end.
TASK_SECONDS = 1.5
#: A wait found ready later than this before the task's end would measure its start-up.
SETTLED = 0.3
CPU_SECONDS = 3.0
LOOK_CALLS = 2000


@contextmanager
def stopped_after(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """The process, stopped on the way out if it still runs: a failed run leaves nothing."""
    try:
        yield process
    finally:
        stop_if_running(process)


def start_task(db: Path, stamp: Path, duration: float) -> tuple[int, subprocess.Popen]:
    taskid = reserve(db, "bench-wait")
    child = [sys.executable, "-S", "-c", STAMP_THEN_EXIT, str(stamp), f"{duration:g}"]
    command = [TWRUN, "--db", str(db), "--taskid", str(taskid), "--", *child]
    return taskid, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start_wait(db: Path, taskid: int) -> tuple[subprocess.Popen, float]:
    """`twctl wait ID --json` and the monotonic time it had the database open (then it is
    housekeeping once and waiting)."""
    waiter = subprocess.Popen(
        [TWCTL, "--db", str(db), "wait", str(taskid), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watched = psutil.Process(waiter.pid)
    while not any(item.path == str(db) for item in watched.open_files()):
        if waiter.poll() is not None:
            raise RuntimeError(f"twctl wait ended early: {waiter.stderr.read()!r}")
        time.sleep(0.005)
    return waiter, time.monotonic()


def reactions(db: Path, stamp: Path) -> list[tuple[float, float]]:
    """(child's end to wait's exit, recorded end to wait's exit) for each run."""
    samples = []
    for _ in range(RUNS):
        stamp.unlink(missing_ok=True)
        taskid, runner = start_task(db, stamp, TASK_SECONDS)
        with stopped_after(runner):
            waiter, ready = start_wait(db, taskid)
            with stopped_after(waiter):
                code, returned = wait_for_end(waiter)
            runner.wait(timeout=30)
        if code != 0 or runner.returncode != 0:
            raise RuntimeError(f"twctl wait exited {code}, twrun {runner.returncode}")
        exited, exited_wall = map(float, stamp.read_text().split())
        if ready > exited - SETTLED:
            raise RuntimeError("twctl wait was not settled before the task ended: lengthen it")
        (record,) = orjson.loads(waiter.stdout.read())
        recorded = record["endtime"] - exited_wall  # twrun's share, on the wall clock
        samples.append((returned - exited, returned - exited - recorded))
    return samples


def waiting_cpu(db: Path, stamp: Path) -> tuple[float, float]:
    """The CPU share of one core a `twctl wait` takes while its task runs on, and its wake-ups
    per second."""
    taskid, runner = start_task(db, stamp, CPU_SECONDS + 3)
    with stopped_after(runner):
        waiter, _ = start_wait(db, taskid)
        with stopped_after(waiter):
            watched = psutil.Process(waiter.pid)
            time.sleep(1.0)  # past start-up and the first housekeeping
            before = watched.cpu_times(), watched.num_ctx_switches().voluntary, time.monotonic()
            time.sleep(CPU_SECONDS)
            after = watched.cpu_times(), watched.num_ctx_switches().voluntary, time.monotonic()
            code, _ = wait_for_end(waiter)
        runner.wait(timeout=30)
    if code != 0:
        raise RuntimeError(f"twctl wait exited {code}")
    window = after[2] - before[2]
    used = (after[0].user + after[0].system) - (before[0].user + before[0].system)
    return used / window, (after[1] - before[1]) / window


def look_costs(db: Path) -> tuple[float, float]:
    """One look for a change (Store.wait_for_change with nothing new) against one `PRAGMA
    data_version`, which also takes the shared lock a writer's commit must wait for."""
    with open_store(db) as store:
        store.wait_for_change(0)
        look = median_of(lambda: store.wait_for_change(0), LOOK_CALLS)
        connection = sqlite3.connect(db, isolation_level=None)
        try:
            query = median_of(
                lambda: connection.execute("PRAGMA data_version").fetchone(), LOOK_CALLS
            )
        finally:
            connection.close()
    return look, query


def main() -> None:
    """Print the wait's reaction, its CPU while waiting and the cost of a look."""
    with tempfile.TemporaryDirectory(prefix="twbench-wait-") as folder:
        db, stamp = Path(folder) / "wait.db", Path(folder) / "end.stamp"
        subprocess.run([TWRUN, "--db", str(db), "--", "true"], check=True)  # creates it
        python = statistics.median(
            wall_times({"python": [sys.executable, "-c", "pass"]}, BASELINE_RUNS)["python"]
        )
        samples = reactions(db, stamp)
        share, wakeups = waiting_cpu(db, stamp)
        look, query = look_costs(db)
    total = [whole for whole, _ in samples]
    own = [part for _, part in samples]
    median = statistics.median(total)
    show(f"python -c pass (baseline, median of {BASELINE_RUNS})", seconds(python), "1.00x")
    show(
        f"task's end to `twctl wait` exited (median of {RUNS})",
        seconds(median),
        f"{median / python:.2f}x   {target(median < 0.100, '< 100 ms')}",
    )
    show("  worst", seconds(max(total)))
    show(
        "  of which after twrun recorded the end (the wait's own share)",
        seconds(statistics.median(own)),
        f"worst {seconds(max(own))}, looks every {seconds(CHANGE_POLL)}",
    )
    show(
        f"`twctl wait` CPU while waiting, over {CPU_SECONDS:g} s",
        f"{share * 100:.2f} %",
        f"of one core   {target(share < 0.01, '< 1%')}",
    )
    show("  its wake-ups per second (voluntary context switches)", f"{wakeups:.1f}")
    show(
        "one look for a change (stat + the header's change counter)",
        seconds(look),
        f"PRAGMA data_version: {seconds(query)} ({query / look:.1f}x)",
    )


if __name__ == "__main__":
    main()
