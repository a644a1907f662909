"""Every process of a task, found by its token after a supervisor crash; those that cannot be
stopped are reported, never a traceback; another user's requests on a shared database.

A second user is `nobody` (uid 65534), through `setpriv`; the processes are real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.fault_helpers import (
    assert_one_line,
    gone,
    kill_at_end,
    query,
    reserve,
    runs,
    twctl,
    twctl_json,
    twrun,
    wait_running,
)
from tests.helpers import BIN, wait_for

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(command: str, *args: str | os.PathLike) -> subprocess.CompletedProcess[str]:
    """Run a console script as the second user; its outputs, never waiting on its leftovers."""
    return subprocess.run(
        [*NOBODY, BIN / command, *map(str, args)], capture_output=True, text=True, timeout=60
    )


#: Starts a double-forked setsid daemon, a job in its own process group and a child that
#: cleared its environment, writes their pids, then waits.
ESCAPES = textwrap.dedent("""
    import os, subprocess, sys, time
    pids = sys.argv[1]
    daemon = subprocess.Popen(
        ["setsid", "sh", "-c", "sleep 60 & echo $! > " + pids + ".daemon"],
    )
    daemon.wait()
    job = subprocess.Popen(["sleep", "60"], process_group=0)
    cleared = subprocess.Popen(["env", "-i", "sleep", "60"], process_group=0)
    with open(pids, "w") as out:
        out.write(f"{job.pid} {cleared.pid}")
    time.sleep(60)
""")


def test_processes_that_left_the_group_are_stopped_after_a_crash(
    db_path: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    script = tmp_path / "escapes.py"
    script.write_text(ESCAPES)
    pids = tmp_path / "pids"
    taskid = reserve(db_path, "--name", "escapes")
    runner = twrun(db_path, taskid, "--grace", "1", command=[sys.executable, script, pids])
    wait_for(lambda: pids.exists() and pids.read_text() and Path(f"{pids}.daemon").exists())
    job, cleared = map(int, pids.read_text().split())
    daemon = int(Path(f"{pids}.daemon").read_text())
    escaped = {name: kill_at_end(request, pid) for name, pid in
               {"daemon": daemon, "job": job, "cleared": cleared}.items()}  # fmt: skip
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    wait_for(lambda: escaped["daemon"].ppid() != runner.pid)  # re-parented away from twrun
    assert all(runs(process) for process in escaped.values())
    output = twctl(db_path, "update")
    assert f"task {taskid} (escapes): LOST" in output
    wait_for(lambda: gone(daemon) and gone(job))
    # A process that cleared its environment cannot be recognised (README: not guaranteed).
    assert runs(escaped["cleared"])
    (record,) = twctl_json(db_path, "history")
    assert record["termsignal"] == "SIGTERM"


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A folder every user can reach (pytest's own tmp_path is under a private folder)."""
    folder = Path(tempfile.mkdtemp(prefix="taskwatcher-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def root_helper(reachable: Path) -> Path:
    """A set-uid root copy of the interpreter: how a task's process becomes root, as sudo does."""
    helper = reachable / "become-root"
    shutil.copy(os.path.realpath(sys.executable), helper)
    helper.chmod(0o4755)
    return helper


@pytest.fixture
def nobodys(reachable: Path) -> Path:
    """A folder that belongs to nobody, for nobody's database."""
    folder = reachable / "nobody"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    return folder


BECOME_ROOT_AND_SLEEP = (
    "import os, sys; os.setuid(0); open(sys.argv[1], 'w').write(str(os.getpid()));"
    " os.execv('/bin/sleep', ['sleep', '60'])"
)


def test_a_leftover_that_became_root_is_reported_and_the_end_recorded(
    nobodys: Path, root_helper: Path, request: pytest.FixtureRequest
) -> None:
    db = nobodys / "tasks.db"
    pidfile = nobodys / "root.pid"
    starts_root = (
        f'{root_helper} -c "{BECOME_ROOT_AND_SLEEP}" {pidfile} >/dev/null 2>&1 & sleep 0.5'
    )
    result = as_nobody("twrun", "--db", db, "--grace", "0.5", "--", "sh", "-c", starts_root)
    root_sleep = kill_at_end(request, int(pidfile.read_text()))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warning = f"could not stop pid {root_sleep.pid} (permission denied)"
    assert warning in assert_one_line(result.stderr, "twrun: warning: ")
    assert runs(root_sleep)
    listed = as_nobody("twctl", "--db", db, "history", "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    (record,) = twctl_json(db, "history")
    assert record["outcome"] == "COMPLETED" and warning in record["termerror"]


@pytest.fixture
def shared_db(reachable: Path) -> Path:
    """A database every user may write: a folder with the sticky bit, a file mode 0666."""
    folder = reachable / "shared"
    folder.mkdir()
    folder.chmod(0o1777)
    db = folder / "tasks.db"
    twctl(db, "init")
    db.chmod(0o666)
    return db


def test_another_user_kills_a_task_through_its_supervisor(
    shared_db: Path, request: pytest.FixtureRequest
) -> None:
    """The request is written on the row and the supervisor woken: no signal crosses users."""
    taskid = reserve(shared_db, "--name", "roots")
    runner = twrun(shared_db, taskid, "--grace", "1", command=["sleep", "60"])
    kill_at_end(request, wait_running(shared_db, taskid)["pid"])
    killed = as_nobody("twctl", "--db", shared_db, "kill", str(taskid))
    assert killed.returncode == 0, killed.stderr
    assert f"task {taskid} (roots): KILLED" in killed.stdout
    assert runner.wait(timeout=10) == 128 + signal.SIGTERM
    (record,) = twctl_json(shared_db, "history")
    assert record["killed_by"].startswith("nobody@")


def test_another_users_lost_task_is_left_to_its_owner(
    shared_db: Path, request: pytest.FixtureRequest
) -> None:
    taskid = reserve(shared_db, "--name", "roots")
    runner = twrun(shared_db, taskid, "--grace", "1", command=["sh", "-c", "sleep 60 & wait"])
    row = wait_running(shared_db, taskid)
    children = wait_for(lambda: len(psutil.Process(row["pid"]).children()) == 1 and
                        psutil.Process(row["pid"]).children())  # fmt: skip
    leftover = kill_at_end(request, children[0].pid)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    listed = as_nobody("twctl", "--db", shared_db, "list", "--json")
    assert listed.returncode == 0
    assert [task["taskid"] for task in json.loads(listed.stdout)] == [taskid]
    killed = as_nobody("twctl", "--db", shared_db, "kill", str(taskid))
    assert killed.returncode == 1
    message = assert_one_line(killed.stderr, "twctl: ")
    assert message.endswith("its processes belong to root: only root can stop them")
    refused = query(shared_db, "SELECT kill_request FROM tasks WHERE id = ?", (taskid,))
    assert refused == [(None,)]  # refused before anything was written
    assert runs(leftover)
    assert f"task {taskid} (roots): LOST" in twctl(shared_db, "update")
    wait_for(lambda: gone(leftover.pid))


def test_a_link_planted_in_a_shared_folder_never_redirects_the_feedback(
    reachable: Path, request: pytest.FixtureRequest
) -> None:
    """In a sticky shared folder another user plants `feedback_<id>.log` (ids are predictable)
    while the task runs: the file twrun made first is in the way, and stays the task's."""
    shared = reachable / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = reachable / "root-only"
    victim.write_text("[secret]kept\n")
    victim.chmod(0o600)
    db = reachable / "tasks.db"
    taskid = reserve(db)
    go = reachable / "go"
    writes = (
        f'while [ ! -e {go} ]; do sleep 0.05; done; echo "[step]mine" >> "$TASKWATCHER_FEEDBACK"'
    )
    runner = twrun(db, taskid, "--feedpath", shared, command=["sh", "-c", writes])
    kill_at_end(request, wait_running(db, taskid)["pid"])
    plant = [*NOBODY, "ln", "-s", "--", victim, shared / f"feedback_{taskid}.log"]
    planted = subprocess.run(plant, capture_output=True, text=True, timeout=60)
    assert "File exists" in planted.stderr  # taken, by a file only its owner may replace
    go.touch()
    assert runner.wait(timeout=30) == 0
    assert victim.read_text() == "[secret]kept\n"
    (record,) = twctl_json(db, "history")
    assert record["feedback"] == {"step": "mine"}


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_feedback_folder_others_may_write_is_refused(
    db_path: Path, tmp_path: Path, mode: int
) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(mode)
    marker = tmp_path / "ran"
    taskid = reserve(db_path)
    result = subprocess.run(
        [BIN / "twrun", "--db", db_path, "--taskid", str(taskid), "--feedpath", folder,
         "--", "touch", marker],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 125
    assert "is writable by other users" in assert_one_line(result.stderr, "twrun: ")
    assert not marker.exists()


def test_a_feedback_folder_of_another_user_is_refused(db_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nobodys"
    folder.mkdir(mode=0o755)
    os.chown(folder, 65534, 65534)
    taskid = reserve(db_path)
    result = subprocess.run(
        [BIN / "twrun", "--db", db_path, "--taskid", str(taskid), "--feedpath", folder,
         "--", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 125
    assert "belongs to nobody" in assert_one_line(result.stderr, "twrun: ")


#: Runs argv[2:] in a new time namespace whose boot clock is shifted by argv[1] seconds: to
#: its processes the wall clock stepped, so psutil dates every process differently.
SHIFTED_CLOCK = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x80):  # CLONE_NEWTIME
        sys.exit(77)
    with open("/proc/self/timens_offsets", "w") as offsets:
        offsets.write(f"boottime 0 {int(float(sys.argv[1]) * 1e9)}\\n")
    pid = os.fork()
    if pid == 0:
        os.execv(sys.argv[2], sys.argv[2:])
    sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")


def test_a_step_of_the_clock_does_not_make_a_running_task_lost(
    db_path: Path, request: pytest.FixtureRequest
) -> None:
    taskid = reserve(db_path, "--name", "steady")
    runner = twrun(db_path, taskid, "--grace", "1", command=["sleep", "60"])
    request.addfinalizer(lambda: runner.kill() or runner.wait())
    child = kill_at_end(request, wait_running(db_path, taskid)["pid"])
    shifted = subprocess.run(
        [sys.executable, "-c", SHIFTED_CLOCK, "0.5", BIN / "twctl", "--db", db_path, "update"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if shifted.returncode == 77:
        pytest.skip("no time namespaces here")
    assert shifted.returncode == 0, shifted.stderr
    assert "0 task(s) archived, 1 live" in shifted.stdout
    assert runner.poll() is None and runs(child)


def test_a_folder_on_the_way_that_others_may_write_is_refused(
    db_path: Path, tmp_path: Path
) -> None:
    """Anyone may rename `team/fb` away and put a folder of theirs, with a link, in its place."""
    team = tmp_path / "team"
    (team / "fb").mkdir(parents=True, mode=0o700)
    team.chmod(0o777)
    taskid = reserve(db_path)
    result = subprocess.run(
        [BIN / "twrun", "--db", db_path, "--taskid", str(taskid), "--feedpath", team / "fb",
         "--", "true"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 125
    message = assert_one_line(result.stderr, "twrun: ")
    assert f"{team} is writable by other users" in message


def test_a_feedback_folder_planted_as_a_link_beside_a_shared_database_is_refused(
    reachable: Path,
) -> None:
    shared = reachable / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    private = reachable / "private"
    private.mkdir(mode=0o700)
    db = shared / "tasks.db"
    planted = subprocess.run(
        [*NOBODY, "ln", "-s", private, shared / "tasks-feedback"], capture_output=True, text=True
    )
    assert planted.returncode == 0, planted.stderr
    taskid = reserve(db)
    result = subprocess.run(
        [BIN / "twrun", "--db", db, "--taskid", str(taskid), "--", "sh", "-c",
         'echo "[a]1" > "$TASKWATCHER_FEEDBACK"', "--feedback"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 125
    assert "is a symbolic link of nobody's" in assert_one_line(result.stderr, "twrun: ")
    assert list(private.iterdir()) == []


def test_a_database_path_planted_as_a_link_is_refused(reachable: Path) -> None:
    shared = reachable / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = reachable / "empty-config"
    target.touch(mode=0o600)
    planted = subprocess.run([*NOBODY, "ln", "-s", target, shared / "tasks.db"])
    assert planted.returncode == 0
    result = subprocess.run(
        [BIN / "twctl", "--db", shared / "tasks.db", "list"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "a symbolic link of another user's" in assert_one_line(result.stderr, "twctl: ")
    assert target.read_bytes() == b""


#: Leaves the task's session, ignores SIGTERM, then forks and exits without end: its pid
#: hops ahead of every listing. It touches argv[1] as it goes.
HOPPER = textwrap.dedent("""
    import os, signal, sys, time
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.time() + 30
    while time.time() < deadline:
        with open(sys.argv[1], "w") as beat:
            beat.write(str(os.getpid()))
        if os.fork():
            os._exit(0)
        time.sleep(0.002)
""")


def still_beating(path: Path) -> bool:
    """Whether whoever writes `path` still does, a second later."""
    before = path.stat().st_mtime_ns
    time.sleep(1.0)
    return path.stat().st_mtime_ns != before


def test_a_task_whose_pid_keeps_hopping_is_stopped(db_path: Path, tmp_path: Path) -> None:
    """The supervisor freezes what is left (SIGSTOP until nothing runs), then kills it.

    After a crash of the supervisor such a task may escape (README: not guaranteed).
    """
    beat = tmp_path / "beat"
    taskid = reserve(db_path, "--name", "hopper")
    command = ["sh", "-c", f'{sys.executable} -c "$0" {beat} & sleep 60', HOPPER]
    runner = twrun(db_path, taskid, "--grace", "0.5", command=command)
    wait_for(beat.exists)
    assert f"task {taskid} (hopper): KILLED" in twctl(db_path, "kill", str(taskid))
    runner.wait(timeout=30)
    assert not still_beating(beat)


def test_a_root_task_that_dropped_to_another_user_is_stopped_after_a_crash(
    db_path: Path, request: pytest.FixtureRequest
) -> None:
    """Changing credentials clears the kernel's death signal: housekeeping must find it."""
    taskid = reserve(db_path, "--name", "dropped")
    runner = twrun(db_path, taskid, "--grace", "0.5", command=[*NOBODY, "sleep", "60"])
    main = kill_at_end(request, wait_running(db_path, taskid)["pid"])
    wait_for(lambda: main.uids().real == 65534)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    time.sleep(0.3)
    assert runs(main)  # the death signal did not come
    assert f"task {taskid} (dropped): LOST" in twctl(db_path, "update", "--grace", "0.5")
    wait_for(lambda: gone(main.pid))


#: Hides its environment as ssh-agent does (PR_SET_DUMPABLE 0), then waits.
NON_DUMPABLE = (
    "import ctypes, time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); open(__import__('sys')"
    ".argv[1], 'w').write('hidden'); time.sleep(60)"
)


def test_a_process_hiding_its_environment_is_said_after_a_crash(
    nobodys: Path, request: pytest.FixtureRequest
) -> None:
    db = nobodys / "tasks.db"
    earlier, marker = nobodys / "earlier", nobodys / "hidden"
    before = subprocess.Popen([*NOBODY, "/usr/bin/python3", "-c", NON_DUMPABLE, earlier])
    kill_at_end(request, before.pid)  # hidden too, but running before the task began
    wait_for(earlier.exists)
    time.sleep(1.1)  # more than a create time's slack
    task = [*NOBODY, BIN / "twrun", "--db", db, "--grace", "0.5", "--", "sh", "-c",
            f'/usr/bin/python3 -c "{NON_DUMPABLE}" {marker} & sleep 60']  # fmt: skip
    runner = subprocess.Popen(task, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(marker.exists)
    hidden = [
        p
        for p in psutil.process_iter(["cmdline"])
        if marker.name in " ".join(p.info["cmdline"] or [])
    ]
    for process in hidden:
        kill_at_end(request, process.pid)
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=30)
    updated = as_nobody("twctl", "--db", db, "update", "--grace", "0.5")
    assert updated.returncode == 0, updated.stderr
    assert "LOST" in updated.stdout
    (record,) = twctl_json(db, "history")
    assert "environment unreadable" in record["termerror"]
    said = record["termerror"].split("could not check pid ")[1].split(" (")[0]
    assert said and str(before.pid) not in said.split(", ")  # the task's are, the earlier not
