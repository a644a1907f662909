"""Random sequences of task operations on one real database, with invariants after every step.

The operations: reserve (unique or not), launch (the real supervisor, `run_task`, in a forked
process so no interpreter start-up is paid; with or without a retry), heartbeat (append to
the feedback file), kill, housekeeping, expiry of reservations (an injected clock), a
supervisor crash, a task's own exit, and time passing. After each one the database must
agree: every task is live or in history, and both only between or during its later attempts,
whose history rows are its earlier ones, numbered from 1; statuses move only along the
machine's TRANSITIONS, each outcome is one that the operations so far allow, and a history
row never changes once written. At the end of each example every task is stopped and no
process of it may be left.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from taskwatcher.engine import control, housekeeping
from taskwatcher.engine.errors import UniqueConflict, UnknownTask
from taskwatcher.engine.lifecycle import FINAL_STATUSES, TRANSITIONS, Status
from taskwatcher.engine.request import LaunchRequest
from taskwatcher.engine.retries import NO_RETRIES, RetryPolicy
from taskwatcher.engine.store import Store, open_store
from taskwatcher.engine.supervisor import run_task
from tests.helpers import wait_for

RESERVATION_TTL = 600.0
GRACE = 0.2
HEARTBEAT_TIMEOUT = 1.0
#: Generous bound on anything that must happen (a launch, an exit, a stop): never reached.
WAIT = 30.0
NAMES = (None, "alpha", "beta")
REQUESTER = "fuzz"
#: The one thing a supervisor says when all goes well: that an attempt failed and another comes.
RETRY_NOTICE = re.compile(r"task \d+: attempt 1 of 2 ended [A-Z]+ \(status \d+\); the next in")
#: Which task a rule acts on, as an index into the candidates of the moment. Rules draw the
#: same values whatever the processes did meanwhile (no preconditions, no sampled_from of
#: live tasks): Hypothesis must see the same draws when it replays an example.
picks = st.integers(min_value=0, max_value=1000)
#: A task ends by itself soon, or runs until something stops it; with exit status 0 or 3.
durations = st.sampled_from([0.2, 5.0])
exit_codes = st.sampled_from([0, 3])


def chosen(candidates: list[int], pick: int) -> int:
    return candidates[pick % len(candidates)]


def reachable_from() -> dict[Status, frozenset[Status]]:
    """Every status reachable from each one through TRANSITIONS, itself included.

    The test looks at the database between steps, so it may miss intermediate statuses
    (RUNNING, SILENT, RUNNING again): a move is legal when the table allows a path for it.
    """
    edges: dict[Status, set[Status]] = defaultdict(set)
    for transition in TRANSITIONS:
        source = transition["source"]
        for status in [source] if isinstance(source, Status) else source:
            edges[status].add(transition["dest"])
    closure = {}
    for start in Status:
        seen, pending = {start}, [start]
        while pending:
            for dest in edges[pending.pop()] - seen:
                seen.add(dest)
                pending.append(dest)
        closure[start] = frozenset(seen)
    return closure


REACHABLE = reachable_from()


def test_the_transition_check_forbids_going_back_and_leaving_an_outcome() -> None:
    """The fuzz check below is only as strong as this closure: it must not allow everything."""
    assert REACHABLE[Status.RESERVED] == frozenset(Status)
    assert Status.RESERVED not in REACHABLE[Status.RUNNING]
    assert Status.EXPIRED not in REACHABLE[Status.STALLED]
    assert REACHABLE[Status.SILENT] >= {Status.RUNNING, Status.STALLED, Status.TIMEOUT}
    assert all(REACHABLE[final] == {final} for final in FINAL_STATUSES)


def fork_supervisor(db: Path, request: LaunchRequest, log: Path) -> int:
    """Run the request through the real `run_task` in a child process, as twrun would.

    The caller must hold no open sqlite connection: sqlite's locks do not survive a fork.
    The child's output and any traceback go to `log`, and it never returns into pytest.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 125
    try:
        with open(log, "a") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            sys.stdout = sys.stderr = out
            logging.basicConfig(stream=out, level=logging.WARNING, force=True)
            try:
                with open_store(db) as store:
                    code = run_task(store, request).exit_code
            except BaseException:
                traceback.print_exc(file=out)
            out.flush()
    finally:
        os._exit(code)


@dataclass
class Tracked:
    """What the test knows of one task: enough to say which outcomes it may end with."""

    taskid: int
    name: str | None
    unique: bool
    allowed: set[Status] = field(default_factory=lambda: {Status.EXPIRED})
    supervisor: int | None = None
    seconds: float = 0.0
    feedback: bool = False
    beats: list[str] = field(default_factory=list)
    crashed: bool = False
    retried: set[Status] = field(default_factory=set)  # outcomes an attempt may be retried on

    def conflicts_with(self, name: str | None, unique: bool) -> bool:
        """Whether, while live, this task stops a reservation of `name` (the unique rule)."""
        return name is not None and self.name == name and (unique or self.unique)


class TaskOperations(RuleBasedStateMachine):
    """One database per example; rules act on it, invariants read it back."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="twfuzz-"))
        self.db = self.folder / "tasks.db"
        self.feedpath = self.folder / "feedback"
        self.feedpath.mkdir()
        self.log = self.folder / "supervisors.log"
        self.clock_offset = 0.0
        self.tasks: dict[int, Tracked] = {}
        self.seen: dict[int, Status] = {}
        self.archived: dict[int, tuple[Any, ...]] = {}
        self.live: dict[int, Status] = {}
        self.pgids: set[int] = set()
        self.supervisors: set[int] = set()  # forked and not reaped yet: their pids stay ours
        open_store(self.db).close()

    # -- access to the database: opened per use, so nothing is open when a supervisor forks

    def store(self) -> Store:
        return open_store(
            self.db,
            clock=lambda: time.time() + self.clock_offset,
            reservation_ttl=RESERVATION_TTL,
        )

    def snapshot(self) -> tuple[dict[int, sqlite3.Row], dict[int, list[sqlite3.Row]]]:
        """Live rows and history rows (each task's attempts in order) by task id, read in one
        transaction (one moment)."""
        connection = sqlite3.connect(self.db, timeout=WAIT, isolation_level=None)
        connection.row_factory = sqlite3.Row
        try:
            connection.execute("BEGIN")
            live = {row["id"]: row for row in connection.execute("SELECT * FROM tasks")}
            history: dict[int, list[sqlite3.Row]] = defaultdict(list)
            for row in connection.execute("SELECT * FROM history ORDER BY taskid, attempt"):
                history[row["taskid"]].append(row)
            connection.execute("COMMIT")
        finally:
            connection.close()
        return live, history

    # -- what the last look at the database says

    def reserved(self) -> list[int]:
        return sorted(taskid for taskid in self.live if self.tasks[taskid].supervisor is None)

    def launched(self) -> list[Tracked]:
        return [self.tasks[taskid] for taskid in sorted(self.live) if self.tasks[taskid].supervisor]

    def feeding(self) -> list[int]:
        return [task.taskid for task in self.launched() if task.feedback]

    def supervised(self) -> list[int]:
        return [task.taskid for task in self.launched() if not task.crashed]

    def ending_soon(self) -> list[int]:
        return [task.taskid for task in self.launched() if not task.crashed and task.seconds < 1]

    # -- rules

    @rule(name=st.sampled_from(NAMES), unique=st.booleans())
    def reserve(self, name: str | None, unique: bool) -> None:
        """A reservation is refused exactly when a live task holds the name (the unique rule)."""
        unique = unique and name is not None
        live_before = set(self.live)
        with self.store() as store:
            try:
                taskid = store.reserve(name, unique=unique)
            except UniqueConflict as conflict:
                assert conflict.holder in live_before
                assert self.tasks[conflict.holder].conflicts_with(name, unique)
                return
        self.tasks[taskid] = Tracked(taskid, name, unique)
        self.live[taskid] = Status.RESERVED
        live_after, _ = self.snapshot()
        assert not [
            other
            for other in live_after
            if other != taskid and self.tasks[other].conflicts_with(name, unique)
        ], f"task {taskid} reserved {name!r} (unique: {unique}) beside a live holder"

    @initialize(seconds=durations, exit_code=exit_codes, feedback=st.booleans())
    def first_launch(self, seconds: float, exit_code: int, feedback: bool) -> None:
        """Every example starts with a running task, so the rules about tasks have one."""
        self.launch(0, seconds, exit_code, feedback)

    @rule(
        pick=picks,
        seconds=durations,
        exit_code=exit_codes,
        feedback=st.booleans(),
        retry=st.booleans(),
    )
    def launch(
        self, pick: int, seconds: float, exit_code: int, feedback: bool, retry: bool = False
    ) -> None:
        """Launch a reservation (a new one when none is left) and wait until it has started."""
        if not self.reserved():
            self.reserve(None, unique=False)
        task = self.tasks[chosen(self.reserved(), pick)]
        argv = (
            ["sleep", f"{seconds:g}"]
            if exit_code == 0
            else ["sh", "-c", f"sleep {seconds:g}; exit {exit_code}"]
        )
        task.name = task.name or argv[0]
        task.seconds, task.feedback = seconds, feedback
        task.allowed = {Status.COMPLETED if exit_code == 0 else Status.FAILED}
        if feedback:
            task.allowed.add(Status.TIMEOUT)
        if retry:
            task.retried = task.allowed - {Status.COMPLETED}
        request = LaunchRequest(
            argv,
            taskid=task.taskid,
            feedpath=self.feedpath if feedback else None,
            timeout=HEARTBEAT_TIMEOUT if feedback else None,
            grace=GRACE,
            retry=RetryPolicy(retries=1, delay=0.1) if retry else NO_RETRIES,
        )
        task.supervisor = fork_supervisor(self.db, request, self.log)
        self.supervisors.add(task.supervisor)
        wait_for(lambda: self.has_started(task.taskid), timeout=WAIT)

    def has_started(self, taskid: int) -> bool:
        live, _ = self.snapshot()
        return taskid not in live or live[taskid]["status"] != Status.RESERVED

    @rule(pick=picks)
    def heartbeat(self, pick: int) -> None:
        if not self.feeding():
            return
        task = self.tasks[chosen(self.feeding(), pick)]
        task.beats.append(str(len(task.beats)))
        with open(self.feedpath / f"feedback_{task.taskid}.log", "a") as feedback:
            feedback.write(f"[beat]{task.beats[-1]}\n")

    @rule(pick=picks)
    def kill(self, pick: int) -> None:
        if not self.live:
            return
        task = self.tasks[chosen(sorted(self.live), pick)]
        if task.supervisor is not None:
            task.allowed.add(Status.KILLED)
        with self.store() as store:
            try:
                ended = control.request_stop(store, task.taskid, REQUESTER)
            except UnknownTask:
                assert task.supervisor is not None, "a reservation ended by itself"
                return  # it ended since the last look: the invariant checks how
        if task.supervisor is None:
            assert ended is not None and ended.outcome == Status.EXPIRED

    @rule()
    def update(self) -> None:
        """Housekeeping may only archive tasks whose supervisor crashed, as LOST."""
        with self.store() as store:
            ended = housekeeping.housekeep(store, grace=GRACE)
        for record in ended:
            assert record.outcome == Status.LOST and self.tasks[record.taskid].crashed

    @rule()
    def expire(self) -> None:
        """Past the time-to-live every reservation, and nothing else, ends EXPIRED."""
        reserved = self.reserved()
        self.clock_offset += RESERVATION_TTL + 1
        with self.store() as store:
            ended = store.expire_reservations()
        assert sorted(record.taskid for record in ended) == reserved
        assert {record.outcome for record in ended} <= {Status.EXPIRED}

    @rule(pick=picks)
    def crash_supervisor(self, pick: int) -> None:
        """SIGKILL a supervisor; its task dies with it and housekeeping must find it LOST.

        Supervisors are reaped only in teardown, so the pid cannot belong to anyone else;
        waiting for the exit without reaping (WNOWAIT) makes the crash complete on return.
        """
        if not self.supervised():
            return
        task = self.tasks[chosen(self.supervised(), pick)]
        task.crashed = True
        task.allowed.add(Status.LOST)
        assert task.supervisor is not None
        os.kill(task.supervisor, signal.SIGKILL)
        os.waitid(os.P_PID, task.supervisor, os.WEXITED | os.WNOWAIT)

    @rule(pick=picks)
    def task_exits(self, pick: int) -> None:
        if not self.ending_soon():
            return
        taskid = chosen(self.ending_soon(), pick)
        wait_for(lambda: taskid in self.snapshot()[1], timeout=WAIT)

    @rule()
    def time_passes(self) -> None:
        """Long enough for a 1 s heartbeat timeout to grade a silent task SILENT or STALLED."""
        time.sleep(0.3)

    # -- invariants

    @invariant()
    def database_agrees(self) -> None:
        live, history = self.snapshot()
        assert live.keys() | history.keys() == self.tasks.keys()
        for taskid, row in live.items():
            self.observe(taskid, Status(row["status"]))
            if row["pgid"] is not None:
                self.pgids.add(row["pgid"])
            if taskid in history:  # its attempts so far, before the one running or to come
                assert self.tasks[taskid].retried, f"task {taskid}: live and in history"
                assert [attempt["attempt"] for attempt in history[taskid]] == list(
                    range(1, row["attempt"])
                ), f"task {taskid}: attempts {row['attempt']} live, history otherwise"
        for taskid, rows in history.items():
            assert [row["attempt"] for row in rows] == list(range(1, len(rows) + 1))
            assert len(rows) <= 1 + bool(self.tasks[taskid].retried), f"task {taskid}: {rows}"
            for row in rows:
                first = self.archived.setdefault((taskid, row["attempt"]), tuple(row))
                assert tuple(row) == first, f"history row of task {taskid} changed"
            *earlier, last = rows
            for row in earlier if taskid not in live else rows:
                self.check_attempt(self.tasks[taskid], row)
            if taskid not in live:
                self.check_end(self.tasks[taskid], last)
        self.live = {taskid: Status(row["status"]) for taskid, row in live.items()}

    def observe(self, taskid: int, status: Status) -> None:
        before = self.seen.get(taskid, Status.RESERVED)
        assert status in REACHABLE[before], f"task {taskid}: {before} -> {status}"
        if status != before:
            event(f"seen {before} -> {status}")  # shown by --hypothesis-show-statistics
        self.seen[taskid] = status

    def check_attempt(self, task: Tracked, row: sqlite3.Row) -> None:
        """An attempt that another one followed: it ended as a retry may follow."""
        outcome = Status(row["outcome"])
        assert outcome in task.retried, f"task {task.taskid}: {outcome} retried"
        self.check_feedback(task, row)

    def check_end(self, task: Tracked, row: sqlite3.Row) -> None:
        outcome = Status(row["outcome"])
        self.observe(task.taskid, outcome)
        assert outcome in task.allowed, f"task {task.taskid} ended {outcome}, not {task.allowed}"
        self.check_feedback(task, row)

    def check_feedback(self, task: Tracked, row: sqlite3.Row) -> None:
        if task.feedback:  # null until the task wrote some, then whatever was read last
            finals = [None] + [{"beat": beat} for beat in task.beats]
            assert orjson.loads(row["feedback"]) in finals
        else:  # never launched, or launched without feedback: no final feedback at all
            assert orjson.loads(row["feedback"]) is None
        if row["pid"] is not None:
            self.pgids.add(row["pid"])  # a task leads its own process group

    # -- end of an example

    def teardown(self) -> None:
        try:
            self.stop_everything()
            self.database_agrees()
            assert self.live == {}, "tasks left live after every one was stopped"
            assert self.strays() == []
            output = self.log.read_text() if self.log.exists() else ""
            said = [line for line in output.splitlines() if not RETRY_NOTICE.search(line)]
            assert said == [], f"the supervisors said: {output}"
        finally:
            for pid in self.supervisors:  # only after a failure can one still run
                os.kill(pid, signal.SIGKILL)  # unreaped, so the pid cannot be someone else's
                os.waitpid(pid, 0)
            shutil.rmtree(self.folder, ignore_errors=True)

    def stop_everything(self) -> None:
        """Stop every live task the way a user would, then wait for every supervisor to exit."""
        self.database_agrees()
        with self.store() as store:
            for taskid in self.live:
                task = self.tasks[taskid]
                if task.supervisor is not None:
                    task.allowed.add(Status.KILLED)
                with suppress(UnknownTask):
                    control.request_stop(store, taskid, REQUESTER)
            housekeeping.housekeep(store, grace=GRACE)
        wait_for(self.reap_supervisors, timeout=WAIT)

    def reap_supervisors(self) -> bool:
        """Collect the supervisors that have exited; True once none is left."""
        for pid in list(self.supervisors):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                self.supervisors.discard(pid)
        return not self.supervisors

    def strays(self) -> list[str]:
        """Processes still running in a task's process group (zombies already count as gone)."""
        found = []
        for process in psutil.process_iter(["status", "cmdline"]):
            with suppress(ProcessLookupError, psutil.NoSuchProcess):
                if (
                    os.getpgid(process.pid) in self.pgids
                    and process.info["status"] != psutil.STATUS_ZOMBIE
                ):
                    found.append(f"{process.pid}: {process.info['cmdline']}")
        return found


TaskOperations.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_task_operations_keep_the_invariants = TaskOperations.TestCase
