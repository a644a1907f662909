"""The load driver: many real twrun and twctl processes on one database at once.

Shared by `tests/test_load.py` (a few tasks, asserting what must hold under any load) and
`bench/load.py` (many, printing the speed).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from taskwatcher.engine import control
from taskwatcher.engine.lifecycle import LIVE_STATUSES, Status
from taskwatcher.engine.store import open_store

#: What no command may ever print, however many share the database.
LOCKED = "database is locked"
#: Generous bound on any one command, so a hang fails the run instead of stalling it.
COMMAND_TIMEOUT = 120.0
BIN = Path(sys.executable).parent

#: The task: a few feedback lines, then an exit status chosen by its mode. A task to be
#: killed says so and heartbeats until `twctl kill` stops it (a minute at most).
TASK_PROGRAM = """\
import os, sys, time
from taskwatcher.grammar import FeedbackWriter

mode, index = sys.argv[2], int(sys.argv[3])
with FeedbackWriter(os.environ["TASKWATCHER_FEEDBACK"]) as feedback:
    feedback.set("index", index)
    feedback.set("progress", 50)
    if mode == "kill":
        feedback.set("state", "waiting")
        for _ in range(120):
            time.sleep(0.5)
            feedback.heartbeat()
        sys.exit(1)
    feedback.set("progress", 100)
    feedback.set("state", "done")
sys.exit(0 if mode == "ok" else 3 + index % 50)
"""
WAITING_LINE = "[state]waiting\n"


class Mode(StrEnum):
    """How a load task ends."""

    OK = "ok"
    FAIL = "fail"
    KILL = "kill"


@dataclass(frozen=True)
class Job:
    """One load task: its place in the run, how it should end, and the id it reserved."""

    index: int
    mode: Mode
    taskid: int

    @property
    def name(self) -> str:
        return task_name(self.index)

    def expected(self) -> dict[str, Any]:
        """The history fields (and twrun status, as `exitcode`) this task must end with."""
        done = self.mode is not Mode.KILL
        feedback = {
            "index": str(self.index),
            "progress": "100" if done else "50",
            "state": "done" if done else "waiting",
        }
        outcome, code = {
            Mode.OK: (Status.COMPLETED, 0),
            Mode.FAIL: (Status.FAILED, 3 + self.index % 50),
            Mode.KILL: (Status.KILLED, 128 + signal.SIGTERM),
        }[self.mode]
        return {"outcome": outcome, "exitcode": code, "feedback": feedback}


def task_name(index: int) -> str:
    return f"load-{index}"


def modes(tasks: int, killed: int) -> list[Mode]:
    """`killed` tasks spread over the run, a third of the rest failing, the others completing."""
    kill_at = set(range(0, tasks, max(1, tasks // max(1, killed)))[:killed])
    return [
        Mode.KILL if index in kill_at else Mode.FAIL if index % 3 == 1 else Mode.OK
        for index in range(tasks)
    ]


def twctl(db: Path, *args: str | int) -> list[str]:
    return [str(BIN / "twctl"), "--db", str(db), *map(str, args)]


def start_all(commands: Sequence[Sequence[str]]) -> list[subprocess.Popen[str]]:
    """Start every command before waiting for any: they all meet on the database together."""
    return [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]


def collect(children: Sequence[subprocess.Popen[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Wait for each child in turn; output is small, so reading in turn cannot deadlock."""
    finished = []
    for child in children:
        stdout, stderr = child.communicate(timeout=COMMAND_TIMEOUT)
        finished.append(subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr))
    return finished


def stop_all(children: Sequence[subprocess.Popen[str]]) -> None:
    """After a failure: SIGTERM makes each twrun stop its task and record it; then reap."""
    running = [child for child in children if child.poll() is None]
    for child in running:
        child.terminate()
    for child in running:
        child.communicate(timeout=COMMAND_TIMEOUT)


def run_together(commands: Sequence[Sequence[str]]) -> list[subprocess.CompletedProcess[str]]:
    children = start_all(commands)
    try:
        return collect(children)
    finally:
        stop_all(children)


@dataclass(frozen=True)
class ListCall:
    """One `twctl list --json`: how long it took and whether it answered properly."""

    seconds: float
    returncode: int
    stderr: str
    listed: list[dict[str, Any]] | None  # None when stdout was not a JSON array

    @property
    def answered(self) -> bool:
        return self.returncode == 0 and not self.stderr and self.listed is not None


def list_once(db: Path) -> ListCall:
    started = time.perf_counter()
    result = subprocess.run(
        twctl(db, "list", "--json"), capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    elapsed = time.perf_counter() - started
    try:
        listed = orjson.loads(result.stdout)
    except orjson.JSONDecodeError:
        listed = None
    return ListCall(
        elapsed, result.returncode, result.stderr, listed if isinstance(listed, list) else None
    )


class Lister(threading.Thread):
    """Calls `twctl list --json` back to back until stopped, as a user watching the load would."""

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.calls: list[ListCall] = []
        self._stop_asked = threading.Event()

    def run(self) -> None:
        while not self._stop_asked.is_set():
            self.calls.append(list_once(self.db))

    def stop(self) -> list[ListCall]:
        """Let the call in progress finish, then return every call made."""
        self._stop_asked.set()
        self.join(timeout=COMMAND_TIMEOUT)
        return self.calls


@dataclass
class LoadReport:
    """Everything a load run saw, for the test to assert and the bench to print."""

    db: Path
    jobs: list[Job]
    reserve_seconds: float
    run_seconds: float
    reserves: list[subprocess.CompletedProcess[str]]
    twruns: list[subprocess.CompletedProcess[str]]
    kills: list[subprocess.CompletedProcess[str]]
    idle_list: list[ListCall]
    busy_list: list[ListCall]
    history: dict[int, dict[str, Any]]  # as `twctl history --json` shows each record
    live_left: int

    def stderr_texts(self) -> list[str]:
        """Every stderr of every command of the run, tasks' own included (they share twrun's)."""
        commands = [*self.reserves, *self.twruns, *self.kills]
        return [result.stderr for result in commands] + [
            call.stderr for call in [*self.idle_list, *self.busy_list]
        ]

    def locked_messages(self) -> list[str]:
        return [text for text in self.stderr_texts() if LOCKED in text]

    def wrong_ends(self) -> list[str]:
        """One line per task whose history record or twrun status is not what its mode says."""
        wrong = []
        for job, twrun in zip(self.jobs, self.twruns, strict=True):
            record = self.history.get(job.taskid)
            if record is None:
                wrong.append(f"{job}: not in history (twrun {twrun.returncode}: {twrun.stderr!r})")
                continue
            seen = {key: record[key] for key in ("outcome", "exitcode", "feedback")}
            if seen != job.expected() or twrun.returncode != job.expected()["exitcode"]:
                wrong.append(f"{job}: twrun {twrun.returncode}, history {seen}")
        return wrong

    def unanswered_lists(self) -> list[ListCall]:
        return [call for call in [*self.idle_list, *self.busy_list] if not call.answered]

    def foreign_listings(self) -> list[dict[str, Any]]:
        """Tasks a listing showed that are not ours or not in a live status: neither may exist."""
        ours = {job.taskid for job in self.jobs}
        return [
            task
            for call in self.busy_list
            for task in call.listed or []
            if task["taskid"] not in ours or task["status"] not in LIVE_STATUSES
        ]


def reserve_jobs(
    db: Path, tasks: int, killed: int
) -> tuple[list[Job], list[subprocess.CompletedProcess[str]]]:
    """Reserve one id per task, all `twctl reserve` at once; fails loudly if any is refused."""
    chosen = modes(tasks, killed)
    reserves = run_together(
        [twctl(db, "reserve", "--name", task_name(i), "--info1", m) for i, m in enumerate(chosen)]
    )
    refused = [result for result in reserves if result.returncode != 0]
    if refused:
        raise RuntimeError(f"{len(refused)} reservation(s) refused, first: {refused[0].stderr}")
    jobs = [
        Job(index, mode, int(result.stdout))
        for index, (mode, result) in enumerate(zip(chosen, reserves, strict=True))
    ]
    return jobs, reserves


def twrun_command(db: Path, folder: Path, job: Job) -> list[str]:
    """twrun as its help shows it for a task that writes feedback, with a 10 s timeout."""
    return [
        str(BIN / "twrun"),
        "--db",
        str(db),
        "--taskid",
        str(job.taskid),
        "--feedpath",
        str(folder),
        "--timeout",
        "10",
        "--",
        sys.executable,
        str(folder / "task.py"),
        "--feedback",
        job.mode,
        str(job.index),
    ]


def kill_when_waiting(db: Path, folder: Path, job: Job) -> subprocess.CompletedProcess[str]:
    """`twctl kill` the task once its feedback says it waits, so its final feedback is known."""
    feedback_file = folder / f"feedback_{job.taskid}.log"
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while not (feedback_file.exists() and WAITING_LINE in feedback_file.read_text()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job} never reported that it waits")
        time.sleep(0.05)
    return subprocess.run(
        twctl(db, "kill", job.taskid, "--wait", COMMAND_TIMEOUT),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )


def run_load(folder: Path, tasks: int, killed: int, idle_samples: int = 1) -> LoadReport:
    """Reserve, run and kill `tasks` tasks at once on a new database in `folder`.

    The idle `twctl list` baseline is taken between the reservations and the launch, so it
    lists as many tasks as the calls under load do at first.
    """
    db = folder / "load.db"
    (folder / "task.py").write_text(TASK_PROGRAM)
    started = time.perf_counter()
    jobs, reserves = reserve_jobs(db, tasks, killed)
    reserve_seconds = time.perf_counter() - started
    idle_list = [list_once(db) for _ in range(idle_samples)]
    lister = Lister(db)
    lister.start()
    started = time.perf_counter()
    children = start_all([twrun_command(db, folder, job) for job in jobs])
    try:
        kills = [kill_when_waiting(db, folder, job) for job in jobs if job.mode is Mode.KILL]
        twruns = collect(children)
    finally:
        stop_all(children)
        busy_list = lister.stop()
    run_seconds = time.perf_counter() - started
    with open_store(db) as store:
        history = {record["taskid"]: record for record in control.history_listing(store)}
        live_left = store.live_count()
    return LoadReport(
        db,
        jobs,
        reserve_seconds,
        run_seconds,
        reserves,
        twruns,
        kills,
        idle_list,
        busy_list,
        history,
        live_left,
    )


@dataclass(frozen=True)
class RaceResult:
    """`racers` simultaneous `twctl reserve --unique --name NAME`, as their exits tell it."""

    name: str
    results: list[subprocess.CompletedProcess[str]]

    @property
    def winners(self) -> list[int]:
        return [int(result.stdout) for result in self.results if result.returncode == 0]

    def losers_naming(self, holder: int) -> int:
        """How many exited 1 with the one-line message naming `holder`."""
        message = f"twctl: name {self.name!r} is held by live task {holder}\n"
        return sum(result.returncode == 1 and result.stderr == message for result in self.results)


def unique_race(db: Path, racers: int, name: str = "nightly") -> RaceResult:
    return RaceResult(
        name, run_together([twctl(db, "reserve", "--unique", "--name", name)] * racers)
    )
