"""Tasks of several real hosts on one PostgreSQL database.

Each host is a Linux namespace of its own (`unshare --uts --pid --fork --mount-proc`): its
own host name, its own pid numbering (pids collide across hosts) and its own /proc, so no
host can see, signal or clean up another's processes; the network is shared, so all reach the
test server on 127.0.0.1. A host's pid 1 is a small init that only reaps; commands run on it
through `nsenter`. What one host knows of another's tasks it knows from the database alone:
each host also keeps its files in a state folder of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import orjson
import psutil
import pytest

from taskwatcher.engine.records import Ended, Task
from taskwatcher.engine.store import open_store
from tests.helpers import BIN, wait_for

#: A host's pid 1: names the host, says it is ready, then reaps whatever is orphaned to it.
INIT = """
import os, signal, socket, sys
socket.sethostname(sys.argv[1])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
print("ready", flush=True)
while True:
    signal.sigwait({signal.SIGCHLD})
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
"""

#: A task that reports a step in its feedback file, then waits to be stopped.
REPORTING = 'printf "[step]two\\n" > "$TASKWATCHER_FEEDBACK"; exec sleep 60'

#: Variables of the test's own run that would make a host take another's name or database.
NOT_INHERITED = ("TASKWATCHER_HOST", "TASKWATCHER_DB", "TASKWATCHER_LEASE")


#: A new host: its own name, pids and /proc (`--mount-proc` mounts it), the network shared;
#: should unshare die, its pid 1 is killed, and with it the whole host.
UNSHARE = ("unshare", "--uts", "--pid", "--fork", "--mount-proc", "--kill-child")


@cache
def namespace_trouble() -> str | None:
    """Why this machine cannot make hosts (pid and UTS namespaces need root), or None."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        made = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`{' '.join(UNSHARE)} true` failed: {error}"
    if made.returncode != 0:
        why = made.stderr.strip() or f"status {made.returncode}"
        return f"`{' '.join(UNSHARE)} true` failed (namespaces need root): {why}"
    return None


def namespaces_work() -> bool:
    return namespace_trouble() is None


#: prctl(2)'s option for the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_the_tests() -> None:
    """In a child before exec: SIGKILL it when the test run dies, however it dies, so that a
    host (whose unshare then kills its pid 1) cannot outlive a killed pytest."""
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def pid_inside(process: psutil.Process) -> int:
    """The pid a process has in its own namespace (the last of its NSpid line)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid line for pid {process.pid}")


def gone(process: psutil.Process) -> bool:
    """Whether the process has ended and been reaped (a zombie still counts as present)."""
    return not process.is_running()


class Host:
    """One machine: a namespace with its own name, pids and /proc (or, when `namespaced` is
    false, just the $TASKWATCHER_HOST of the commands it runs), and its own state folder."""

    def __init__(self, name: str, folder: Path, *, namespaced: bool = True) -> None:
        self.name, self.namespaced = name, namespaced
        self.env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
        self.env["XDG_STATE_HOME"] = str(folder / name / "state")
        if not namespaced:
            self.env["TASKWATCHER_HOST"] = name
        self.started: list[subprocess.Popen[str]] = []
        self._unshare: subprocess.Popen[str] | None = None
        self.init: psutil.Process | None = None
        if namespaced:
            self._boot()

    def _boot(self) -> None:
        self._unshare = subprocess.Popen(
            [*UNSHARE, sys.executable, "-c", INIT, self.name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=die_with_the_tests,
        )
        assert self._unshare.stdout is not None
        ready = self._unshare.stdout.readline()  # the init named the host: commands may enter
        children = psutil.Process(self._unshare.pid).children()
        if ready != "ready\n" or len(children) != 1:
            self._unshare.kill()  # its pid 1, if any, dies with it (--kill-child)
            self._unshare.communicate(timeout=10)
            raise AssertionError(f"host {self.name} did not boot: {ready!r}, {children}")
        self.init = children[0]

    def command(self, *argv: str | os.PathLike[str]) -> list[str]:
        """argv run on this host: inside its namespaces when it has them."""
        inside = [str(arg) for arg in argv]
        if self.init is None:
            return inside
        enter = ["nsenter", f"--target={self.init.pid}", "--uts", "--pid", "--mount", "--"]
        return enter + inside

    def start(self, *argv: str | os.PathLike[str], **extra: str) -> subprocess.Popen[str]:
        """A command in the background; stopped with the host at the end of the test."""
        started = subprocess.Popen(
            self.command(*argv),
            env=self.env | extra,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(started)
        return started

    def run(self, *argv: str | os.PathLike[str], **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv),
            env=self.env | extra,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def twctl(self, url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(BIN / "twctl", "--db", url, *args, **extra)

    def twrun(self, url: str, command: str, **extra: str) -> subprocess.Popen[str]:
        """twrun supervising `sh -c command`; the Popen is nsenter's, whose only child
        (outside the namespace's view) is twrun itself."""
        return self.start(BIN / "twrun", "--db", url, "--", "sh", "-c", command, **extra)

    def processes(self) -> list[psutil.Process]:
        """Every process alive on this host but its init."""
        assert self.init is not None
        namespace = pid_namespace(self.init.pid)
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(OSError, psutil.Error):
                if (
                    process.pid != self.init.pid
                    and pid_namespace(process.pid) == namespace
                    and process.status() != psutil.STATUS_ZOMBIE
                ):
                    found.append(process)
        return found

    def crash(self) -> None:
        """The machine dies: SIGKILL to its pid 1 kills every process of the namespace."""
        if self.init is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.init.send_signal(signal.SIGKILL)

    def stop(self) -> None:
        """Nothing of the host may outlive the test, even a stopped process."""
        self.crash()
        with contextlib.ExitStack() as waits:  # each waited for, even if one wait fails
            for started in self.started:
                # nsenter itself too: a stopped one would never reap its child, and the dying
                # namespace's init waits until every process of it has been reaped
                if started.poll() is None:
                    started.kill()
                waits.callback(started.communicate, timeout=10)
            if self._unshare is not None:
                waits.callback(self._unshare.communicate, timeout=10)


#: `hosts(name, namespaced=True)`: a new host of the test.
MakeHost = Callable[..., Host]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[MakeHost]:
    """Makes hosts for the test (skipping it where namespaces cannot be made); every one is
    killed afterwards, whatever the test did to it, even if stopping another failed."""
    with contextlib.ExitStack() as stopping:

        def make(name: str, *, namespaced: bool = True) -> Host:
            if namespaced and (trouble := namespace_trouble()):
                pytest.skip(f"cannot make a host as a namespace: {trouble}")
            host = Host(name, tmp_path, namespaced=namespaced)
            stopping.callback(host.stop)
            return host

        yield make


def live_task(url: str, ready: Callable[[Task], bool] = lambda task: True) -> Task:
    """The one live task, once `ready` holds for it."""

    def found() -> Task | None:
        with open_store(url) as store:
            tasks = store.list_tasks()
        return tasks[0] if len(tasks) == 1 and ready(tasks[0]) else None

    return wait_for(found, timeout=20)


def supervisor_and_task(runner: subprocess.Popen[str]) -> tuple[psutil.Process, psutil.Process]:
    """The twrun that nsenter started, and the task twrun started, seen from outside."""
    twrun = wait_for(lambda: psutil.Process(runner.pid).children(), timeout=20)[0]
    task = wait_for(lambda: twrun.children(), timeout=20)[0]
    return twrun, task


def archived_by_housekeeping(url: str, host: Host, taskid: int) -> Ended:
    """Run housekeeping on `host` until the task is in history; its record."""

    def archived() -> Ended | None:
        updated = host.twctl(url, "update")
        assert updated.returncode == 0, updated.stderr
        with open_store(url) as store:
            return store.history_of(taskid)

    return wait_for(archived, timeout=30, interval=0.2)


def test_another_host_lists_reads_and_kills_a_task(pg_url: str, hosts: MakeHost) -> None:
    """Host B knows host A's task from the database only: its host, its pids as host A
    numbers them, its feedback; its kill goes through the database and returns once host A's
    supervisor stopped the task and archived it."""
    host_a, host_b = hosts("hostA"), hosts("hostB")
    runner = host_a.twrun(pg_url, REPORTING)
    twrun, task_process = supervisor_and_task(runner)
    with open_store(pg_url) as store:
        task = live_task(pg_url, lambda task: task.pid is not None and task.feedback)
        assert store.load_feedback(task.taskid) == {"step": "two"}

    listed = host_b.twctl(pg_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (shown,) = orjson.loads(listed.stdout)
    assert (shown["taskid"], shown["host"], shown["status"]) == (task.taskid, "hostA", "RUNNING")
    # pids as host A numbers them, which host B's own pids may well repeat
    assert shown["supervisor_pid"] == pid_inside(twrun) != twrun.pid
    assert shown["pid"] == pid_inside(task_process) != task_process.pid

    feedback = host_b.twctl(pg_url, "feedback", str(task.taskid))
    assert feedback.returncode == 0, feedback.stderr
    assert orjson.loads(feedback.stdout) == {"step": "two"}

    killed = host_b.twctl(pg_url, "kill", str(task.taskid))
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert "KILLED" in killed.stdout
    assert gone(task_process), "twctl kill returned while the task was still running"
    with open_store(pg_url) as store:
        ended = store.history_of(task.taskid)
        assert store.list_tasks() == []
    assert ended is not None and ended.outcome == "KILLED"
    assert "hostB" in (ended.killed_by or "")
    assert ended.feedback == {"step": "two"}
    _, stderr = runner.communicate(timeout=20)
    assert runner.returncode == 143, stderr
    assert host_a.processes() == []


def test_a_dead_host_s_task_is_lost_after_its_lease(pg_url: str, hosts: MakeHost) -> None:
    """A machine dies with its task: nobody is left there to archive it, so after the lease
    another host's housekeeping archives it LOST, and says why."""
    host_a, host_c = hosts("hostA"), hosts("hostC")
    runner = host_a.twrun(pg_url, "exec sleep 60", TASKWATCHER_LEASE="2")
    twrun, task_process = supervisor_and_task(runner)
    taskid = live_task(pg_url, lambda task: task.pid is not None).taskid
    supervisor_inside = pid_inside(twrun)

    host_a.crash()
    wait_for(lambda: gone(twrun) and gone(task_process), timeout=10)
    ended = archived_by_housekeeping(pg_url, host_c, taskid)
    assert ended.outcome == "LOST"
    assert "lease expired" in (ended.termerror or "")
    assert f"pid {supervisor_inside} on host hostA" in (ended.termerror or "")
    with open_store(pg_url) as store:
        assert store.list_tasks() == []
    assert gone(twrun) and gone(task_process)


def test_a_stopped_supervisor_finds_its_task_lost_and_stops_it(
    pg_url: str, hosts: MakeHost
) -> None:
    """A supervisor paused past its lease (SIGSTOP, a frozen VM) is LOST for the other hosts,
    which cannot reach its task; resumed, it finds its row gone and stops the task itself."""
    host_a, host_c = hosts("hostA"), hosts("hostC")
    runner = host_a.twrun(pg_url, "exec sleep 60", TASKWATCHER_LEASE="2")
    twrun, task_process = supervisor_and_task(runner)
    taskid = live_task(pg_url, lambda task: task.pid is not None).taskid

    twrun.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: twrun.status() == psutil.STATUS_STOPPED, timeout=10)
        ended = archived_by_housekeeping(pg_url, host_c, taskid)
        assert ended.outcome == "LOST" and "lease expired" in (ended.termerror or "")
        assert task_process.is_running()  # host C has no way to it: host A must stop it
    finally:
        # nsenter stopped itself when its child stopped (as a shell's job would): resumed, it
        # resumes twrun too, and is there again to reap it
        runner.send_signal(signal.SIGCONT)
        twrun.send_signal(signal.SIGCONT)

    wait_for(lambda: gone(task_process), timeout=15)
    _, stderr = runner.communicate(timeout=20)
    assert runner.returncode == 125, stderr
    assert f"task {taskid} ended LOST" in stderr and "not recorded" in stderr
    assert host_a.processes() == []
    with open_store(pg_url) as store:
        assert store.history_of(taskid) == ended  # the supervisor rewrote nothing


#: The racers of one host: the modules imported once (50 cold interpreters would take most
#: of the time on 2 cores), then one forked process per racer, each with a store of its own.
#: A racer opens its store, says so, then once per round waits at the round's gate (a file
#: the test holds locked) and reserves the round's name; even-numbered racers ask for it
#: unique. Each says what it got in one line, written at once (atomic on a pipe).
RACERS = """
import fcntl, os, sys, traceback
import orjson
import taskwatcher.engine.pg_store
from taskwatcher.engine.errors import UniqueConflict
from taskwatcher.engine.store import open_store

url, first, count, gates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def say(**message):
    os.write(1, orjson.dumps(message) + b"\\n")

def race(index):
    store = open_store(url)
    say(index=index, ready=True)
    for number, gate in enumerate(gates):
        fd = os.open(gate, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            say(index=index, won=store.reserve(f"race-{number}", unique=index % 2 == 0))
        except UniqueConflict as conflict:
            say(index=index, holder=conflict.holder)
        os.close(fd)

racers = []
for index in range(first, first + count):
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            race(index)
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    racers.append(pid)
sys.exit(sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in racers))
"""

RACERS_PER_HOST = 25
ROUNDS = 3


def test_the_unique_rule_holds_across_processes_of_two_hosts(
    pg_url: str, hosts: MakeHost, tmp_path: Path
) -> None:
    """50 processes on two hosts reserve one name at once, half unique, half plain: a unique
    reservation that won stands alone, whoever came first; refusals name a real holder."""
    open_store(pg_url).close()  # the schema made once, not by 50 processes at once
    namespaced = namespaces_work()  # without namespaces the hosts are told apart by name
    gates = [tmp_path / f"gate-{number}" for number in range(ROUNDS)]
    held = []
    try:
        for gate in gates:
            held.append(os.open(gate, os.O_RDWR | os.O_CREAT))
            fcntl.flock(held[-1], fcntl.LOCK_EX)
        spawners = [
            hosts(name, namespaced=namespaced).start(
                sys.executable, "-c", RACERS, pg_url, str(first), str(RACERS_PER_HOST), *gates
            )
            for first, name in ((0, "hostA"), (RACERS_PER_HOST, "hostB"))
        ]
        outputs = [Lines(spawner) for spawner in spawners]

        def everyone() -> list[dict]:
            """One line from each racer: each host's racers write to that host's pipe."""
            said = [orjson.loads(out.next()) for out in outputs for _ in range(RACERS_PER_HOST)]
            assert sorted(line["index"] for line in said) == list(range(2 * RACERS_PER_HOST))
            return said

        everyone()  # all ready, their stores open
        for number, fd in enumerate(held):
            fcntl.flock(fd, fcntl.LOCK_UN)  # all racers go
            said = everyone()
            won = {line["won"]: line["index"] % 2 == 0 for line in said if "won" in line}
            with open_store(pg_url) as store:
                holders = store.list_tasks(name=f"race-{number}")
            assert won, f"round {number}: nobody got the name"
            assert {task.taskid for task in holders} == set(won), f"round {number}"
            if any(won.values()):
                assert len(won) == 1, f"round {number}: a unique winner shares its name: {won}"
            if any(task.unique for task in holders):
                assert len(holders) == 1, f"round {number}: {holders}"
            refused = {line["holder"] for line in said if "holder" in line}
            assert refused <= set(won), f"round {number}: refused for a task not holding it"
    finally:
        for fd in held:
            os.close(fd)  # releases every gate left: racers may finish
    for spawner in spawners:
        _, stderr = spawner.communicate(timeout=30)
        assert spawner.returncode == 0, stderr


class Lines:
    """A process's output line by line, each waited for with a bound (a racer that hangs
    must fail the test, not hang it). Reads the pipe itself, never through its buffer."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process, self._fd, self._pending = process, process.stdout.fileno(), b""

    def next(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                raise AssertionError(f"no answer from pid {self.process.pid} in {timeout} s")
            chunk = os.read(self._fd, 4096)
            if not chunk:
                _, stderr = self.process.communicate(timeout=30)
                raise AssertionError(f"ended ({self.process.returncode}) early: {stderr}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode()
