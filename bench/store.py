"""Store speed: a task's whole life and twctl's reads, against bare sqlite on the same file.

Targets: archive under 1 ms per task, list_tasks under 20 ms with 200 live tasks and
100,000 history rows. Ratios compare with a baseline measured in the same run, so a slow
machine shows up in the baseline rather than as a failed target.
"""

from __future__ import annotations

import itertools
import os
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.measure import fill_history, median_of
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.ownership import new_token, token_digest
from taskwatcher.engine.records import Ending, Launch
from taskwatcher.engine.store import Store, open_store

LIFECYCLES = 10_000
LIVE_TASKS = 200
HISTORY_ROWS = 100_000
NAMES = 100  # history rows spread over this many task names
READ_REPEATS = 30


def each(action: Callable[[int], object], items: list[int]) -> float:
    """Mean seconds per item when acting on every item once, in order."""
    started = time.perf_counter()
    for item in items:
        action(item)
    return (time.perf_counter() - started) / len(items)


def show(
    label: str,
    seconds: float,
    *,
    target: float | None = None,
    baseline: tuple[str, float] | None = None,
) -> None:
    """One figure line: value, target verdict, and ratio to a named baseline."""
    figure = f"{seconds * 1e3:9.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:9.1f} µs"
    parts = [f"{label:<52}{figure}"]
    if target is not None:
        verdict = "ok" if seconds < target else "MISSED"
        parts.append(f"target < {target * 1e3:g} ms: {verdict}")
    if baseline is not None:
        name, reference = baseline
        parts.append(f"{seconds / reference:8.1f}x {name}")
    print("   ".join(parts), flush=True)


def bench_launch() -> Launch:
    """What a supervisor records when it claims a task: this process stands in for it."""
    return Launch(
        supervisor_pid=os.getpid(),
        supervisor_ctime=psutil.Process().create_time(),
        host=socket.gethostname(),
        token_hash=token_digest(new_token()),
        uid=os.getuid(),
        command=["x"],
        timeout=30,
    )


def lifecycle_figures(store: Store, write_baseline: tuple[str, float]) -> None:
    """Reserve, claim and archive LIFECYCLES tasks, one phase at a time, per task."""
    started = time.perf_counter()
    ids = [store.reserve(f"job-{index % NAMES}", info1="bench") for index in range(LIFECYCLES)]
    show(
        f"reserve ({LIFECYCLES:,} tasks), per task",
        (time.perf_counter() - started) / LIFECYCLES,
        baseline=write_baseline,
    )
    launch = bench_launch()
    token_hash, pid = launch.token_hash, os.getpid()
    show(
        "claim, per task",
        each(lambda taskid: store.claim(taskid, launch), ids),
        baseline=write_baseline,
    )
    show(
        "set_child, per task",
        each(lambda taskid: store.set_child(taskid, token_hash, pid, None), ids),
        baseline=write_baseline,
    )
    show(
        "grade, per task",
        each(lambda taskid: store.grade(taskid, token_hash, Status.SILENT), ids),
        baseline=write_baseline,
    )
    ending = Ending(Status.COMPLETED, exitcode=0, feedback={"p": "100"})
    show(
        "archive with final feedback, per task",
        each(lambda taskid: store.archive(taskid, ending, token_hash=token_hash), ids),
        target=1e-3,
        baseline=write_baseline,
    )


def read_figures(store: Store, raw: sqlite3.Connection, path: Path) -> None:
    """twctl's reads on a well-used database: 200 live tasks and 100,000 finished ones.

    Each is compared with bare sqlite fetching the same rows: the ratio is the cost of
    turning rows into records (JSON decoding, computed timers).
    """
    fill_history(path, HISTORY_ROWS, NAMES)
    launch = bench_launch()
    for index in range(LIVE_TASKS):
        taskid = store.reserve(f"live-{index}")
        if index % 4:
            store.claim(taskid, launch)
            store.set_child(taskid, launch.token_hash, os.getpid(), None)

    def bare(sql: str, *params: object) -> tuple[str, float]:
        return "bare sqlite", median_of(lambda: raw.execute(sql, params).fetchall(), READ_REPEATS)

    by_name = "SELECT * FROM history WHERE taskname = ? ORDER BY endtime DESC, id DESC"
    show(
        f"list_tasks ({LIVE_TASKS} live, {HISTORY_ROWS:,} history rows)",
        median_of(store.list_tasks, READ_REPEATS),
        target=20e-3,
        baseline=bare("SELECT * FROM tasks ORDER BY id"),
    )
    show(
        f"history(name=..., limit=50) of {HISTORY_ROWS:,} rows",
        median_of(lambda: store.history(name="job-7", limit=50), READ_REPEATS),
        baseline=bare(by_name + " LIMIT 50", "job-7"),
    )
    show(
        f"history(name=...): all {HISTORY_ROWS // NAMES:,} rows of one name",
        median_of(lambda: store.history(name="job-7"), READ_REPEATS),
        baseline=bare(by_name, "job-7"),
    )
    show(
        "history(outcome=..., limit=50)",
        median_of(lambda: store.history(outcome="COMPLETED", limit=50), READ_REPEATS),
        baseline=bare(
            "SELECT * FROM history WHERE outcome = ? ORDER BY endtime DESC, id DESC LIMIT 50",
            "COMPLETED",
        ),
    )
    show(
        "history_of(taskid)",
        median_of(lambda: store.history_of(1_000_123), READ_REPEATS),
        baseline=bare("SELECT * FROM history WHERE taskid = ?", 1_000_123),
    )
    plan = raw.execute(f"EXPLAIN QUERY PLAN {by_name}", ("job-7",)).fetchall()
    print(f"{'query plan, history by name':<52}{plan[-1][-1]}")


def clear_figures(store: Store) -> None:
    """clear of the whole history: in batches, so the longest batch is what writers wait."""
    batch_ends = [time.perf_counter()]
    removed = store.clear_history(progress=lambda done: batch_ends.append(time.perf_counter()))
    total = batch_ends[-1] - batch_ends[0]
    longest = max(later - earlier for earlier, later in itertools.pairwise(batch_ends))
    # each gap holds one batch and the pause after the one before, as long as that batch
    show(f"clear of {removed:,} history rows, in all", total)
    show("clear: longest batch plus the pause before it", longest, target=1.0)


def raw_select_one(raw: sqlite3.Connection) -> Callable[[], object]:
    return lambda: raw.execute("SELECT 1").fetchone()


def raw_one_row_write(raw: sqlite3.Connection) -> Callable[[], object]:
    """The least a write transaction can cost on this file: the unit for store writes."""

    def write() -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO scratch (value) VALUES ('x')")
        raw.execute("COMMIT")

    return write


def main() -> None:
    """Print per-task write costs and read latencies, with targets and baseline ratios."""
    with tempfile.TemporaryDirectory(prefix="twbench-") as folder:
        path = Path(folder) / "bench.db"
        with open_store(path) as store:
            raw = sqlite3.connect(path, isolation_level=None)
            raw.execute("PRAGMA journal_mode = TRUNCATE")  # the store's own durability
            raw.execute("PRAGMA synchronous = FULL")
            raw.execute("CREATE TABLE scratch (id INTEGER PRIMARY KEY, value TEXT)")
            show("baseline: sqlite SELECT 1 round trip", median_of(raw_select_one(raw), 1000))
            one_row = median_of(raw_one_row_write(raw), 1000)
            show("baseline: one-row INSERT in BEGIN IMMEDIATE/COMMIT", one_row)
            write_baseline = ("one-row write", one_row)
            show(
                "store write doing nothing (housekeeping query)",
                median_of(store.expire_reservations, 1000),
                baseline=write_baseline,
            )
            lifecycle_figures(store, write_baseline)
            read_figures(store, raw, path)
            clear_figures(store)
            raw.close()


if __name__ == "__main__":
    main()
