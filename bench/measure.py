"""What the benchmark suites share: timing, figure lines, and the files and rows they feed on."""

from __future__ import annotations

import random
import sqlite3
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

KEYWORDS = ["progress", "testcase_id", "testcase_name", "info", "step", "status-code", "_tmp"]


def median_of(action: Callable[[], object], repeats: int) -> float:
    """Median seconds per call: robust to a stray slow call on a noisy machine."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def wall_times(
    commands: Mapping[str, Sequence[str]], repeats: int, **options: Any
) -> dict[str, list[float]]:
    """Wall seconds of `repeats` runs of each command, interpreter start-up included.

    The commands take turns, so a burst of load on a noisy machine slows all of them alike
    instead of the one that happened to run then. Output is discarded; `options` go to
    subprocess.run (env=..., cwd=...). A failing command raises, so a broken setup never
    passes for a fast one.
    """
    samples: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(repeats):
        for label, command in commands.items():
            started = time.perf_counter()
            result = subprocess.run(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **options
            )
            samples[label].append(time.perf_counter() - started)
            if result.returncode != 0:
                raise RuntimeError(f"{label}: exit {result.returncode}: {result.stderr!r}")
    return samples


def show(label: str, figure: str, verdict: str = "") -> None:
    print(f"{label:<64}{figure:>12}   {verdict}".rstrip(), flush=True)


def seconds(value: float) -> str:
    if abs(value) < 1e-3:
        return f"{value * 1e6:.0f} µs"
    return f"{value * 1e3:.1f} ms" if abs(value) < 10 else f"{value:.2f} s"


def target(ok: bool, text: str) -> str:
    return f"target {text}: {'ok' if ok else 'MISSED'}"


def write_feedback(path: Path, lines: int) -> None:
    """A task's feedback: mostly values, some comments, empty lines, clears and a rare `[]`."""
    pick = random.Random(lines)
    with open(path, "w") as file:
        for number in range(lines):
            roll = pick.random()
            if roll < 0.1:
                file.write(f"# step {number} done\n")
            elif roll < 0.15:
                file.write(f"[{pick.choice(KEYWORDS)}]\n")
            elif roll < 0.16:
                file.write("\n")
            elif roll < 0.161:
                file.write("[]\n")
            elif roll < 0.17:
                file.write("[heartbeat]\n")
            else:
                file.write(f"[{pick.choice(KEYWORDS)}]value {number} of the test run\n")


def fill_history(path: Path, rows: int, names: int) -> None:
    """Bulk-insert finished tasks the way many archives would have left them.

    Rows get task ids from 1,000,000 up and are spread over `names` names, job-0, job-1...
    """
    feedback = orjson.dumps({"progress": "100", "testcase_name": "teardown"})
    command = orjson.dumps(["run.sh", "--fast"]).decode()
    now = time.time()
    with sqlite3.connect(path) as connection:
        connection.executemany(
            "INSERT INTO history (taskid, taskname, info1, starttime, endtime, duration, feedback,"
            " exitcode, outcome, reservetime, host, pid, timeout, command)"
            " VALUES (?, ?, 'bench', ?, ?, 60, ?, 0, 'COMPLETED', ?, 'bench', 1, 30, ?)",
            (
                (
                    1_000_000 + index,
                    f"job-{index % names}",
                    now - rows + index - 60,
                    now - rows + index,
                    feedback,
                    now - rows + index - 61,
                    command,
                )
                for index in range(rows)
            ),
        )
    connection.close()


def cpu_share(command: Sequence[str], settle: float, window: float) -> float:
    """The share of one core `command`'s own process uses (user + system, its threads
    included, its children not) over `window` seconds, after `settle` seconds of start-up;
    then it is stopped. Its output is discarded."""
    import psutil  # only the suites that measure CPU need it

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        watched = psutil.Process(process.pid)
        before, started = watched.cpu_times(), time.perf_counter()
        time.sleep(window)
        after, elapsed = watched.cpu_times(), time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(timeout=30)
    return ((after.user + after.system) - (before.user + before.system)) / elapsed
