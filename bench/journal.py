"""What the rollback journal costs against WAL: write latency with 200 tasks writing at once.

The store left WAL because a damaged `-shm` kills every process that maps it (SIGBUS). Here 200
processes each write a heartbeat once a second, as 200 supervisors do, first with the
store's journal (TRUNCATE, synchronous FULL) through the real Store, then with WAL
(synchronous NORMAL, what the store used before) on the same statements. Latency is per
write, lock waits included; memory is each writer's peak resident size.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import socket
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from taskwatcher.engine.ownership import token_digest
from taskwatcher.engine.records import Launch
from taskwatcher.engine.store import open_store

WRITERS = 200
WRITES = 8
PER_SECOND = 1.0


def _token_hash(taskid: int) -> str:
    """The digest of the token of each bench task, which its writer knows as a supervisor
    knows its own."""
    return token_digest(f"bench-{taskid}")


def _write_with_store(path: Path, taskid: int, start: float, results: multiprocessing.Queue):
    token_hash = _token_hash(taskid)
    with open_store(path) as store:
        _paced(lambda: store.heartbeat(taskid, token_hash, time.time()), start, results)


def _write_with_wal(path: Path, taskid: int, start: float, results: multiprocessing.Queue):
    connection = sqlite3.connect(path, timeout=10, isolation_level=None)
    connection.execute("PRAGMA synchronous = NORMAL")

    def write() -> None:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(
            "UPDATE tasks SET heartbeat = max(coalesce(heartbeat, ?), ?), lastupdate = ?"
            " WHERE id = ? AND token_hash = ?",
            (time.time(), time.time(), time.time(), taskid, _token_hash(taskid)),
        )
        connection.execute("COMMIT")

    _paced(write, start, results)


def _paced(write, start: float, results: multiprocessing.Queue) -> None:
    """WRITES writes at PER_SECOND from a common start, each writer at its own phase."""
    time.sleep(max(0.0, start - time.time()) + random.random() / PER_SECOND)
    latencies = []
    for _ in range(WRITES):
        began = time.perf_counter()
        write()
        latencies.append(time.perf_counter() - began)
        time.sleep(max(0.0, 1 / PER_SECOND - latencies[-1]))
    results.put((latencies, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def _database(folder: Path, name: str, wal: bool) -> Path:
    path = folder / name
    created = psutil.Process().create_time()
    with open_store(path) as store:
        for _ in range(WRITERS):
            taskid = store.reserve("bench")
            launch = Launch(
                supervisor_pid=os.getpid(),
                supervisor_ctime=created,
                host=socket.gethostname(),
                token_hash=_token_hash(taskid),
                uid=os.getuid(),
            )
            store.claim(taskid, launch)
            store.set_child(taskid, launch.token_hash, os.getpid(), created)
    if wal:
        with sqlite3.connect(path) as raw:
            raw.execute("PRAGMA journal_mode = WAL")
    return path


def _run(path: Path, writer) -> tuple[list[float], list[int]]:
    results: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 2.0
    workers = [
        multiprocessing.Process(target=writer, args=(path, taskid, start, results))
        for taskid in range(1, WRITERS + 1)
    ]
    for worker in workers:
        worker.start()
    collected = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    latencies = sorted(value for values, _ in collected for value in values)
    return latencies, [peak for _, peak in collected]


def _line(label: str, latencies: list[float], peaks: list[int], baseline: float | None) -> float:
    median = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99)]
    peak = statistics.median(peaks) / 1024
    ratio = "" if baseline is None else f"   {median / baseline:5.1f}x WAL's median"
    print(
        f"{label:<34} median {median * 1e3:6.2f} ms   p99 {p99 * 1e3:6.1f} ms"
        f"   max {latencies[-1] * 1e3:6.1f} ms   writer peak RSS {peak:.1f} MiB{ratio}",
        flush=True,
    )
    return median


def main() -> None:
    """Print latency and memory for both journal modes, WAL as the baseline."""
    print(f"{WRITERS} writers, {WRITES} heartbeats each at {PER_SECOND:g}/s", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        wal = _database(Path(folder), "wal.db", wal=True)
        wal_median = _line("WAL, synchronous NORMAL (before)", *_run(wal, _write_with_wal), None)
        store = _database(Path(folder), "store.db", wal=False)
        _line("store: TRUNCATE, synchronous FULL", *_run(store, _write_with_store), wal_median)


if __name__ == "__main__":
    main()
