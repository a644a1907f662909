"""Process control with real processes: launching, PID-reuse safety, stopping whole tasks."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from taskwatcher.engine.process import (
    ChildWatch,
    LaunchError,
    ProcessIdentity,
    exit_status_to_code,
    identity_of,
    is_same_process,
    reap_adopted,
    remnants,
    signal_identity,
    signal_name,
    spawn,
    terminate_task,
)

PY = sys.executable
#: Generous bound for anything that should happen "at once"; only reached when a test fails.
PATIENCE = 10.0

#: Prelude of the child scripts: publish(text) writes argv[1] atomically, for the test to read.
PUBLISH = """\
import os, signal, sys, time
def publish(text, path=sys.argv[1]):
    with open(path + ".tmp", "w") as out:
        out.write(text)
    os.replace(path + ".tmp", path)
"""

IGNORES_SIGTERM = (
    PUBLISH
    + """
signal.signal(signal.SIGTERM, signal.SIG_IGN)
publish("ready")
time.sleep(60)
"""
)

#: The leader keeps running; its child moves to a session (and group) of its own.
SETSID_GRANDCHILD = (
    PUBLISH
    + """
if os.fork() == 0:
    os.setsid()
    publish(str(os.getpid()))
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""
)

#: The leader daemonizes a grandchild (fork, setsid, fork) and exits once it runs.
DAEMONIZES = (
    PUBLISH
    + """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        publish(str(os.getpid()))
        time.sleep(60)
    os._exit(0)
os.wait()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
"""
)

#: Run as a subprocess, so that becoming a subreaper does not change the pytest process.
SUBREAPER_SUPERVISOR = """\
import json, os, sys, time
import psutil
from taskwatcher.engine import process
process.become_subreaper()
pidfile = sys.argv[2]
child, _ = process.spawn([sys.executable, "-c", sys.argv[1], pidfile], None)
leader = process.identity_of(child.pid)
child.wait()
daemon = process.identity_of(int(open(pidfile).read()))
me = os.getpid()
report = {
    "adopted": psutil.Process(daemon.pid).ppid() == me,
    "found": daemon.pid in [p.pid for p in process.remnants(leader, child.pid, adopter=me)],
    "last": process.terminate_task(leader, child.pid, grace=1, adopter=me).last_signal,
    "gone": not process.is_same_process(daemon),
    "zombies": [p.pid for p in psutil.Process().children() if p.status() == "zombie"],
}
print(json.dumps(report))
"""

#: Spawns `sleep 60` (die_with_parent per argv[1]), prints its pid, then waits to be killed.
PARENT_OF_SLEEP = """\
import sys, time
from taskwatcher.engine.process import spawn
child, _ = spawn(["sleep", "60"], None, die_with_parent=sys.argv[1] == "yes")
print(child.pid, flush=True)
time.sleep(60)
"""


def wait_for(condition: Callable[[], object], what: str) -> None:
    """Poll until condition holds; fail after PATIENCE seconds."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def published(path: Path) -> str:
    """What a child script published to path, once it has."""
    wait_for(path.exists, f"{path.name} to be written")
    return path.read_text()


@pytest.fixture
def launch() -> Iterator[Callable[..., subprocess.Popen]]:
    """spawn(), with whatever a test leaves running stopped and reaped afterwards."""
    started: list[tuple[subprocess.Popen, ProcessIdentity | None]] = []

    def start(argv: list[str], env: dict[str, str] | None = None, **options) -> subprocess.Popen:
        child, _ = spawn(argv, env, **options)
        started.append((child, identity_of(child.pid)))
        return child

    yield start
    for child, leader in started:
        if leader is not None:
            terminate_task(leader, child.pid, grace=0)
        child.wait(timeout=PATIENCE)


def test_child_leads_its_own_process_group(launch) -> None:
    child = launch(["sleep", "60"])
    assert os.getpgid(child.pid) == child.pid != os.getpgrp()


def test_argv_and_env_reach_the_child_untouched(launch, tmp_path: Path) -> None:
    odd = ["two words", "'single'", '"double"', "*.py", "$HOME", "", "a\nb", "; rm -rf /"]
    dump = (
        "import json, os, sys; json.dump([sys.argv[2:], dict(os.environ)], open(sys.argv[1], 'w'))"
    )
    out = tmp_path / "argv.json"
    child = launch([PY, "-c", dump, str(out), *odd], {"ONLY_THIS": "1"})
    assert child.wait(timeout=PATIENCE) == 0
    argv, env = json.loads(out.read_text())
    assert argv == odd
    assert env.get("ONLY_THIS") == "1"
    assert "XDG_STATE_HOME" not in env  # set in the test process, not passed on


def test_missing_command_is_127() -> None:
    with pytest.raises(LaunchError, match="command not found: no-such-command-4a7f") as caught:
        spawn(["no-such-command-4a7f", "arg"], None)
    assert caught.value.exit_code == 127


@pytest.mark.parametrize(
    ("mode", "content", "reason"),
    [
        (0o644, b"#!/bin/sh\necho hi\n", "permission denied: "),
        (0o755, b"\x7fELF-not-really\x00\x01", "exec format error"),
        (0o755, b"#!/no/such/interpreter\n", "bad interpreter"),
    ],
    ids=["no-x-bit", "not-a-program", "missing-interpreter"],
)
def test_file_that_cannot_run_is_126(
    tmp_path: Path, mode: int, content: bytes, reason: str
) -> None:
    program = tmp_path / "program"
    program.write_bytes(content)
    program.chmod(mode)
    with pytest.raises(LaunchError, match=reason) as caught:
        spawn([str(program)], None)
    assert caught.value.exit_code == 126


def test_directory_is_126(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="is a directory") as caught:
        spawn([str(tmp_path)], None)
    assert caught.value.exit_code == 126


@pytest.mark.parametrize(
    ("returncode", "expected"),
    [
        (0, (0, "EXIT", "exit status 0")),
        (3, (3, "EXIT", "exit status 3")),
        (-signal.SIGTERM, (143, "SIGTERM", "killed by SIGTERM")),
        (-signal.SIGKILL, (137, "SIGKILL", "killed by SIGKILL")),
        (-(signal.SIGRTMIN + 2), (128 + signal.SIGRTMIN + 2, "SIGRTMIN+2", "killed by SIGRTMIN+2")),
    ],
)
def test_exit_status_mapping(returncode: int, expected: tuple[int, str, str]) -> None:
    assert exit_status_to_code(returncode) == expected


def test_signal_names() -> None:
    assert signal_name(signal.SIGINT) == "SIGINT"
    assert signal_name(signal.SIGRTMAX) == "SIGRTMAX"


def test_identity_follows_the_process_not_the_pid(launch) -> None:
    child = launch(["sleep", "60"])
    identity = identity_of(child.pid)
    assert identity is not None and is_same_process(identity)
    impostor = ProcessIdentity(child.pid, identity.create_time - 5)
    assert not is_same_process(impostor)
    assert not signal_identity(impostor, signal.SIGKILL)
    assert terminate_task(impostor, child.pid, grace=0.2).last_signal == "SIGTERM"
    assert child.poll() is None and is_same_process(identity)
    assert remnants(impostor, child.pid) == []


def test_signal_identity_reaches_the_recorded_process(launch) -> None:
    child = launch(["sleep", "60"])
    identity = identity_of(child.pid)
    assert signal_identity(identity, signal.SIGTERM)
    assert child.wait(timeout=PATIENCE) == -signal.SIGTERM
    assert not signal_identity(identity, signal.SIGTERM)
    assert identity_of(child.pid) is None


def test_zombie_has_an_identity_but_is_not_running(launch) -> None:
    child = launch(["true"])
    identity = identity_of(child.pid)
    with ChildWatch(child) as watch:
        assert select.select([watch], [], [], PATIENCE)[0]
    assert identity_of(child.pid) == identity
    assert not is_same_process(identity)
    assert remnants(identity, child.pid) == []
    assert child.wait(timeout=PATIENCE) == 0


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "sigchld"])
def test_child_watch_wakes_on_exit_without_reaping(launch, use_pidfd: bool) -> None:
    handler = signal.getsignal(signal.SIGCHLD)
    child = launch(["sleep", "60"])
    with ChildWatch(child, use_pidfd=use_pidfd) as watch:
        assert select.select([watch], [], [], 0)[0] == []
        os.kill(child.pid, signal.SIGKILL)
        assert select.select([watch], [], [], PATIENCE)[0] == [watch]
    assert child.wait(timeout=PATIENCE) == -signal.SIGKILL
    assert signal.getsignal(signal.SIGCHLD) == handler


def test_cooperative_task_stops_with_sigterm(launch) -> None:
    child = launch(["sleep", "60"])
    leader = identity_of(child.pid)
    assert terminate_task(leader, child.pid, grace=PATIENCE).last_signal == "SIGTERM"
    assert child.wait(timeout=PATIENCE) == -signal.SIGTERM  # the caller still gets the status


def test_task_ignoring_sigterm_gets_sigkill_after_grace(launch, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = launch([PY, "-c", IGNORES_SIGTERM, str(ready)])
    published(ready)
    assert terminate_task(identity_of(child.pid), child.pid, grace=0.3).last_signal == "SIGKILL"
    assert exit_status_to_code(child.wait(timeout=PATIENCE)) == (
        137,
        "SIGKILL",
        "killed by SIGKILL",
    )


def test_background_job_in_the_group_is_stopped_too(launch) -> None:
    child = launch(["sh", "-c", "sleep 60 & sleep 60"])
    leader = identity_of(child.pid)
    wait_for(lambda: len(remnants(leader, child.pid)) >= 2, "the background sleep")
    task = remnants(leader, child.pid)
    assert {os.getpgid(identity.pid) for identity in task} == {child.pid}
    assert terminate_task(leader, child.pid, grace=PATIENCE).last_signal == "SIGTERM"
    assert not any(is_same_process(identity) for identity in task)


def test_grandchild_in_its_own_session_is_found_and_stopped(launch, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    child = launch([PY, "-c", SETSID_GRANDCHILD, str(pidfile)])
    leader = identity_of(child.pid)
    grandchild = identity_of(int(published(pidfile)))
    assert os.getpgid(grandchild.pid) != child.pid
    assert grandchild.pid in [process.pid for process in remnants(leader, child.pid)]
    assert terminate_task(leader, child.pid, grace=PATIENCE).last_signal == "SIGTERM"
    assert not is_same_process(grandchild)


def test_subreaper_keeps_hold_of_a_daemonized_grandchild(tmp_path: Path) -> None:
    pidfile = tmp_path / "daemon"
    run = subprocess.run(
        [PY, "-c", SUBREAPER_SUPERVISOR, DAEMONIZES, str(pidfile)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(run.stdout)
    assert report == {
        "adopted": True,
        "found": True,
        "last": "SIGTERM",
        "gone": True,
        "zombies": [],
    }


def test_reap_adopted_spares_the_kept_children() -> None:
    kept = os.posix_spawnp("sh", ["sh", "-c", "exit 3"], os.environ)
    adopted = os.posix_spawnp("true", ["true"], os.environ)
    for pid in (kept, adopted):
        wait_for(lambda pid=pid: psutil.Process(pid).status() == "zombie", "the child to exit")
    reaped = reap_adopted(keep={kept})
    assert adopted in reaped and kept not in reaped
    assert os.waitstatus_to_exitcode(os.waitpid(kept, 0)[1]) == 3


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_child_dies_with_its_killed_parent_only_when_asked(die_with_parent: bool) -> None:
    option = "yes" if die_with_parent else "no"
    with subprocess.Popen(
        [PY, "-c", PARENT_OF_SLEEP, option], stdout=subprocess.PIPE, text=True
    ) as parent:
        child = identity_of(int(parent.stdout.readline()))
        parent.kill()
    if die_with_parent:
        wait_for(lambda: not is_same_process(child), "the orphan to die")
    else:
        assert is_same_process(child)
        signal_identity(child, signal.SIGKILL)


#: Runs `sh -c SCRIPT` as a task's leader under a fresh subreaper, waits for the leader, and
#: prints whether `left_nothing` says so, then cleans up what is left.
LEFT_NOTHING = """
import json, os, signal, subprocess, sys, time
from taskwatcher.engine.process import become_subreaper, left_nothing, remnants, identity_of
become_subreaper()
leader = subprocess.Popen(["sh", "-c", sys.argv[1]], start_new_session=True)
identity = identity_of(leader.pid)
leader.wait()
time.sleep(0.2)  # what it started is settled: forked, moved to its own session
fast = left_nothing(leader.pid)
slow = bool(remnants(identity, leader.pid, adopter=os.getpid()))
for rest in remnants(identity, leader.pid, adopter=os.getpid()):
    os.kill(rest.pid, signal.SIGKILL)
print(json.dumps([fast, slow]))
"""


@pytest.mark.parametrize(
    ("script", "left"),
    [
        ("true", False),
        ("sleep 30 &", True),  # a background job, still in the task's group
        ("setsid sleep 30 &", True),  # in a session of its own, adopted by the subreaper
        ("(setsid sh -c 'sleep 30 &' &)", True),  # double-forked away, adopted too
    ],
)
def test_the_quick_check_never_misses_what_the_task_left(script: str, left: bool) -> None:
    out = subprocess.run(
        [PY, "-c", LEFT_NOTHING, script], capture_output=True, text=True, timeout=30, check=True
    )
    fast, slow = json.loads(out.stdout)
    assert slow is left  # the pass over /proc, as the reference
    assert fast is not left  # nothing left is recognised quickly, and only then
