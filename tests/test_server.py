"""The command server (`TASKWATCHER_SERVER=1`): a command forked by it behaves as the same
command run in its caller's process, or the caller runs it itself.

Each test has a runtime folder of its own, so its own server, and ends that server.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import BIN, run_cli, wait_for
from tests.run_helpers import PY, script
from tests.server_helpers import alive, server_pid

#: Reports what a task inherited from the process that ran twrun (and who supervised it).
REPORT = """\
    import json, os, resource, sys
    supervisor = os.getppid()
    with open(f"/proc/{supervisor}/stat") as stat:
        worker_parent = int(stat.read().rsplit(")", 1)[1].split()[1])
    mask = int(next(l for l in open("/proc/self/status") if l.startswith("SigIgn")).split()[1], 16)
    umask = os.umask(0)
    print(json.dumps({
        "cwd": os.getcwd(),
        "umask": umask,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "greeting": os.environ.get("GREETING"),
        "ignored": mask,
        "args": sys.argv[1:],
        "stdin": sys.stdin.read(),
        "supervisor_parent": worker_parent,
    }))
"""


def report(tmp_path: Path, env: dict[str, str], **popen: object) -> dict:
    task = script(tmp_path, "report.py", REPORT)
    result = subprocess.run(
        [str(BIN / "twrun"), "--", PY, task, "one", "two words"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        input="from stdin",
        **popen,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_served_task_inherits_what_it_would_from_its_caller(
    tmp_path: Path, served: dict[str, str]
) -> None:
    server = server_pid(served)
    here = tmp_path / "somewhere"
    here.mkdir()

    def caller_state() -> None:
        os.umask(0o027)
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, resource.getrlimit(7)[1]))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    popen = {"cwd": here, "preexec_fn": caller_state}
    env = {**served, "GREETING": "hello"}
    by_server = report(tmp_path, env, **popen)
    in_process = report(tmp_path, {**env, "TASKWATCHER_SERVER": "0"}, **popen)
    assert by_server.pop("supervisor_parent") == server
    assert in_process.pop("supervisor_parent") != server
    assert by_server == in_process
    assert by_server["cwd"] == str(here) and by_server["umask"] == 0o027
    assert by_server["nofile"][0] == 512 and by_server["greeting"] == "hello"
    assert by_server["ignored"] & (1 << (signal.SIGHUP - 1))
    assert by_server["args"] == ["one", "two words"] and by_server["stdin"] == "from stdin"


@pytest.mark.parametrize(
    ("argv", "shell"),
    [
        (["twrun", "--", "sh", "-c", "echo out; echo err >&2; exit 7"], ""),
        (["twrun", "--", "sh", "-c", "kill -TERM $$"], ""),
        (["twrun"], ""),
        (["twctl", "list", "--json"], ""),
        (["twctl", "bogus"], ""),
        (["twparse", "/nonexistent/feedback"], ""),
        # closed streams: none of them may become the client's socket in the worker
        (["twrun", "--", "sh", "-c", "echo err >&2; exit 3"], "2>&-"),
        (["twrun", "--", "sh", "-c", "cat; echo read $?"], "<&-"),
        (["twctl", "list", "--json"], ">&-"),
        # the help's default database follows the caller's XDG_STATE_HOME, not the server's
        (["twrun", "--help"], "XDG_STATE_HOME=/elsewhere"),
        (["twctl", "list", "--help"], "XDG_STATE_HOME=/elsewhere"),
    ],
)
def test_a_served_command_ends_and_prints_as_it_would_in_process(
    served: dict[str, str], argv: list[str], shell: str
) -> None:
    server_pid(served)
    command = " ".join(shlex.quote(str(BIN / argv[0])) for _ in [0])
    command += "".join(f" {shlex.quote(arg)}" for arg in argv[1:])
    if shell.endswith("&-"):
        command += f" {shell}"
    elif shell:
        command = f"{shell} {command}"

    def run(env: dict[str, str]) -> tuple[int, str, str]:
        result = subprocess.run(
            ["sh", "-c", command], capture_output=True, text=True, timeout=30, env=env
        )
        return result.returncode, result.stdout, result.stderr

    assert run(served) == run({**served, "TASKWATCHER_SERVER": "0"})


def test_signals_that_come_as_a_served_command_ends_are_no_trouble(
    served: dict[str, str],
) -> None:
    """SIGWINCH (a terminal resized) again and again while served commands start, run and
    end: each ends as it would have without them."""
    server_pid(served)
    for _ in range(10):
        twctl = subprocess.Popen(
            [BIN / "twctl", "list", "--json"], env=served, stdout=subprocess.PIPE, text=True
        )
        while twctl.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                twctl.send_signal(signal.SIGWINCH)
            time.sleep(0.0005)
        assert (twctl.returncode, twctl.stdout.read()) == (0, "[]\n")


def test_a_server_is_never_started_from_within_a_task(served: dict[str, str]) -> None:
    """Its twrun adopts orphans, and would end the server with the task; a server already
    running serves the task's commands, and outlives the task."""
    folder = Path(served["XDG_RUNTIME_DIR"]) / "taskwatcher"
    inner = f"{BIN / 'twctl'} list --json >/dev/null; {BIN / 'twctl'} list --json >/dev/null"
    outside = {**served, "TASKWATCHER_SERVER": "0"}
    assert run_cli("twrun", "--", "sh", "-c", inner, env=outside).returncode == 0
    assert list(folder.glob("*.sock")) == []
    server = server_pid(served)
    assert run_cli("twrun", "--", "sh", "-c", inner, env=outside).returncode == 0
    assert alive(server)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT])
def test_a_signal_to_a_served_twrun_reaches_its_supervisor(
    served: dict[str, str], signum: int
) -> None:
    """Served, refused by the server (another CPU affinity: the handlers that would pass
    signals on are put back), and run in process: the same end, whether twrun handles the
    signal (SIGTERM) or dies of it (SIGQUIT)."""
    server_pid(served)

    def no_core() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def no_core_one_cpu() -> None:
        no_core()
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    ends = []
    for mode, prepare in (("1", no_core), ("1", no_core_one_cpu), ("0", no_core)):
        env = {**served, "TASKWATCHER_SERVER": mode}
        twrun = subprocess.Popen([BIN / "twrun", "--", "sleep", "30"], env=env, preexec_fn=prepare)
        task = wait_for(lambda env=env: _live_pid(env))
        twrun.send_signal(signum)
        ends.append(twrun.wait(timeout=15))
        wait_for(lambda task=task: not alive(task), timeout=10)
    assert ends[0] == ends[1] == ends[2] != 0


def test_a_served_twrun_killed_takes_its_task_with_it(served: dict[str, str]) -> None:
    server_pid(served)
    twrun = subprocess.Popen([BIN / "twrun", "--", "sleep", "30"], env=served)
    task = wait_for(lambda: _live_pid(served))
    twrun.kill()
    twrun.wait(timeout=15)
    wait_for(lambda: not alive(task), timeout=10)  # no stray process left behind


#: A task that starts one process in a session of its own (it keeps the task's token) and
#: one with an empty environment (it stays in the task's process group), then waits.
SPREAD = """\
    import subprocess, sys, time
    away = subprocess.Popen(["sleep", "60"], start_new_session=True)
    bare = subprocess.Popen(["sleep", "60"], env={})
    with open(sys.argv[1], "w") as pids:
        pids.write(f"{away.pid} {bare.pid}")
    time.sleep(60)
"""


def test_a_served_supervisor_killed_leaves_no_process_of_its_task(
    served: dict[str, str], tmp_path: Path
) -> None:
    """Its task, started without a death signal (the server is there), and what that task
    started come to the server, which kills (what holds the task's token, and the task's
    process group) and reaps them; the caller ends as its supervisor did, by SIGKILL."""
    server = server_pid(served)
    pids = tmp_path / "pids"
    twrun = subprocess.Popen(
        [BIN / "twrun", "--", PY, script(tmp_path, "spread.py", SPREAD), pids],
        env=served,
        stderr=subprocess.PIPE,
    )
    task = wait_for(lambda: _live_pid(served))
    wait_for(lambda: pids.exists() and pids.read_text())
    started = [int(pid) for pid in pids.read_text().split()]
    os.kill(_parent_of(task), signal.SIGKILL)
    assert twrun.wait(timeout=15) == -signal.SIGKILL
    assert twrun.stderr.read() == b""
    for pid in [task, *started]:
        wait_for(lambda pid=pid: not alive(pid), timeout=10)
    wait_for(lambda: _children_of(server) == [], timeout=10)  # reaped, not left as zombies
    assert alive(server)


def test_a_served_task_that_cleared_its_environment_still_ends_with_its_supervisor(
    served: dict[str, str],
) -> None:
    server = server_pid(served)
    twrun = subprocess.Popen([BIN / "twrun", "--", "env", "-i", "sleep", "60"], env=served)
    task = wait_for(lambda: _live_pid(served))
    os.kill(_parent_of(task), signal.SIGKILL)
    assert twrun.wait(timeout=15) == -signal.SIGKILL
    wait_for(lambda: not alive(task), timeout=10)
    wait_for(lambda: _children_of(server) == [], timeout=10)


HOOK_WITH_A_DAEMON = """\
    setsid -f sh -c 'exec >/dev/null 2>&1; echo $$ > "$1"; exec sleep 60' sh "$1"
    while [ ! -s "$1" ]; do sleep 0.01; done
"""


def test_a_daemon_a_hook_started_outlives_its_served_twrun_as_it_would_in_process(
    served: dict[str, str], tmp_path: Path
) -> None:
    """Not the task's (a session of its own, no token): it comes to the server as its twrun
    ends, and is only reaped once it ends."""
    server = server_pid(served)
    marker = tmp_path / "daemon"
    # The hook ends once its daemon is in a session of its own: before, it would still be
    # in the hook's group, which twrun stops with the hook, served or not.
    hook = script(tmp_path, "hook.sh", HOOK_WITH_A_DAEMON)
    result = run_cli("twrun", "--on-exit", f"sh {hook} {marker}", "--", "true", env=served)
    assert result.returncode == 0, result.stderr
    daemon = int(wait_for(lambda: marker.exists() and marker.read_text().strip()))
    time.sleep(0.3)  # the server's look at what its worker left
    assert alive(daemon) and _parent_of(daemon) == server
    os.kill(daemon, signal.SIGTERM)
    wait_for(lambda: daemon not in _children_of(server), timeout=10)  # reaped


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def _children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def _live_pid(env: dict[str, str]) -> int | None:
    listing = run_cli("twctl", "list", "--json", env={**env, "TASKWATCHER_SERVER": "0"})
    rows = json.loads(listing.stdout or "[]")
    return rows[0]["pid"] if rows and rows[0]["pid"] else None


def _one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _idle_scheduling() -> None:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


@pytest.mark.parametrize("prepare", [_one_cpu, _idle_scheduling])
def test_a_caller_the_server_cannot_stand_in_for_runs_the_command_itself(
    tmp_path: Path, served: dict[str, str], prepare: Callable[[], None]
) -> None:
    server = server_pid(served)
    if prepare is _one_cpu and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: no affinity differs from the server's")
    assert report(tmp_path, served, preexec_fn=prepare)["supervisor_parent"] != server


def test_a_server_started_by_a_caller_that_ignores_sigchld_still_reaps(
    served: dict[str, str],
) -> None:
    def ignore_sigchld() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    first = subprocess.run(
        [BIN / "twrun", "--", "true"], env=served, preexec_fn=ignore_sigchld, capture_output=True
    )
    assert first.returncode == 0, first.stderr
    folder = Path(served["XDG_RUNTIME_DIR"]) / "taskwatcher"
    wait_for(lambda: list(folder.glob("*.sock")))
    assert run_cli("twrun", "--", "sh", "-c", "exit 3", env=served).returncode == 3


def test_no_server_where_others_could_reach_its_socket(tmp_path: Path) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="tws-", dir="/tmp"))
    try:
        (runtime / "taskwatcher").mkdir(mode=0o777)
        os.chmod(runtime / "taskwatcher", 0o777)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "TASKWATCHER_SERVER": "1"}
        env["TASKWATCHER_DB"] = str(tmp_path / "tasks.db")
        for _ in range(2):
            result = run_cli("twrun", "--", "sh", "-c", "exit 3", env=env)
            assert result.returncode == 3, result.stderr
        assert list((runtime / "taskwatcher").iterdir()) == []
    finally:
        subprocess.run(["rm", "-rf", str(runtime)], check=True)


def test_an_idle_server_ends_and_takes_its_socket_away(served: dict[str, str]) -> None:
    env = {**served, "TASKWATCHER_SERVER_IDLE": "0.5"}
    server = server_pid(env)
    wait_for(lambda: not alive(server), timeout=15)
    assert list((Path(served["XDG_RUNTIME_DIR"]) / "taskwatcher").glob("*.sock")) == []


def test_a_server_told_to_end_lets_its_running_commands_finish(served: dict[str, str]) -> None:
    server = server_pid(served)
    folder = Path(served["XDG_RUNTIME_DIR"]) / "taskwatcher"
    twrun = subprocess.Popen([BIN / "twrun", "--", "sh", "-c", "sleep 1; exit 5"], env=served)
    wait_for(lambda: _live_pid(served))
    os.kill(server, signal.SIGTERM)
    wait_for(lambda: not list(folder.iterdir()))  # closed to new commands at once
    assert twrun.wait(timeout=15) == 5  # its client still learns how it ended
    wait_for(lambda: not alive(server), timeout=10)


def test_a_client_whose_server_was_killed_waits_for_its_command_all_the_same(
    served: dict[str, str],
) -> None:
    server = server_pid(served)
    twrun = subprocess.Popen(
        [BIN / "twrun", "--", "sh", "-c", "sleep 1; exit 5"], env=served, stderr=subprocess.PIPE
    )
    wait_for(lambda: _live_pid(served))
    os.kill(server, signal.SIGKILL)
    assert twrun.wait(timeout=15) == 1
    assert "the command server was killed" in twrun.stderr.read().decode()
    ended = run_cli("twctl", "history", "--json", env={**served, "TASKWATCHER_SERVER": "0"})
    assert json.loads(ended.stdout)[0]["exitcode"] == 5  # the task ran to its end


def test_a_command_whose_server_does_not_answer_can_still_be_stopped(
    served: dict[str, str],
) -> None:
    """A signal that comes before the server took the command is this process's own: it
    ends as it would have in process, and the worker forked meanwhile never starts."""
    server = server_pid(served)
    os.kill(server, signal.SIGSTOP)
    try:
        twrun = subprocess.Popen([BIN / "twrun", "--", "sleep", "30"], env=served)
        time.sleep(0.5)  # connected, waiting for an answer
        twrun.send_signal(signal.SIGTERM)
        assert twrun.wait(timeout=15) == -signal.SIGTERM
    finally:
        os.kill(server, signal.SIGCONT)
    time.sleep(0.5)  # the server's turn: the client is gone, its worker must not run
    listing = run_cli("twctl", "history", "--json", env={**served, "TASKWATCHER_SERVER": "0"})
    assert [row["taskname"] for row in json.loads(listing.stdout)] == ["true"]
    assert _live_pid(served) is None


def test_work_in_a_folder_on_the_import_path_keeps_the_same_server(
    tmp_path: Path, served: dict[str, str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = {**served, "PYTHONPATH": str(project)}
    server = server_pid(env)
    (project / "output.txt").write_text("a file the work made\n")
    assert report(tmp_path, env)["supervisor_parent"] == server


#: A caller that hands its command over and then holds its go until told (a file appears):
#: a caller stopped or starved between the server's answer and its go. Prints the status.
LATE_GO = """\
    import os, sys, time
    from taskwatcher.cli import start
    go_when, sys.argv = sys.argv[1], ["twrun", "--", *sys.argv[2:]]
    folder, name = start.server_address()
    connection = start._socket.socket(start._socket.AF_UNIX, start._socket.SOCK_STREAM)
    connection.connect(f"/proc/self/fd/{folder}/{name}")
    start._send_request(connection, "twrun", [0, 1, 2])
    reply, _ = start._receive(connection, 9, with_handle=True)
    assert reply[:1] == b"P", reply
    print("answered", int.from_bytes(reply[1:], "little"), flush=True)
    while not os.path.exists(go_when):
        time.sleep(0.01)
    try:
        connection.sendall(b"G")
    except BrokenPipeError:  # the server answered already, and hung up
        pass
    ended, _ = start._receive(connection, 5)
    print(ended[:1].decode(), int.from_bytes(ended[1:], "little") >> 8, flush=True)
"""


def late_caller(tmp_path: Path, served: dict[str, str], go: Path) -> tuple[subprocess.Popen, int]:
    """A LATE_GO caller of `sh -c 'exit 3'`, answered by a running server; its worker's pid."""
    server_pid(served)
    late = subprocess.Popen(
        [PY, script(tmp_path, "late.py", LATE_GO), str(go), "sh", "-c", "exit 3"],
        env=served, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    word, worker = late.stdout.readline().split()
    assert word == "answered"
    return late, int(worker)


def test_a_caller_slow_to_say_go_holds_nobody_up_and_its_command_still_runs(
    tmp_path: Path, served: dict[str, str]
) -> None:
    """Its go, however late, starts its worker; meanwhile the server serves the others."""
    go = tmp_path / "go"
    late, _ = late_caller(tmp_path, served, go)
    started = time.monotonic()
    assert run_cli("twrun", "--", "true", env=served).returncode == 0
    assert time.monotonic() - started < 4  # the server waited for nobody's go (it gave 5 s)
    go.touch()
    assert late.communicate(timeout=30)[0] == "W 3\n"  # its command ran, to its end


def test_a_worker_killed_before_its_go_is_said_to_have_run_nothing(
    tmp_path: Path, served: dict[str, str]
) -> None:
    """The caller is told R (not taken), as when the server refuses: it then runs the
    command itself, where a W would have made it report an end that never happened."""
    go = tmp_path / "go"
    late, worker = late_caller(tmp_path, served, go)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{worker}").exists())  # reaped by the server
    go.touch()
    assert late.communicate(timeout=30)[0] == "R 0\n"
    listing = run_cli("twctl", "history", "--json", env={**served, "TASKWATCHER_SERVER": "0"})
    assert [row["taskname"] for row in json.loads(listing.stdout)] == ["true"]  # server_pid's


def test_a_signal_as_the_go_is_prepared_leaves_no_signal_blocked(
    tmp_path: Path, served: dict[str, str]
) -> None:
    """A signal that comes while the caller blocks signals for its go (here: at once after
    the block) makes it run the command itself, with its signal mask as it was."""
    server_pid(served)
    caller = script(
        tmp_path,
        "caller.py",
        """\
        import sys, types
        from taskwatcher.cli import start
        real = start._signal

        def block_then_interrupt(how, mask):
            before = real.pthread_sigmask(how, mask)
            if how == real.SIG_BLOCK and mask:
                raise start._Interrupted  # what the handler of a signal come then raises
            return before

        start._signal = types.SimpleNamespace(**vars(real))
        start._signal.pthread_sigmask = block_then_interrupt
        sys.exit(start.twrun())
        """,
    )
    shows_mask = "print(next(l for l in open('/proc/self/status') if l.startswith('SigBlk')))"
    ran = subprocess.run(
        [PY, caller, "--", PY, "-c", shows_mask],
        env=served, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["SigBlk:", "0000000000000000"]


def test_callers_it_must_refuse_keep_no_idle_server_up(served: dict[str, str]) -> None:
    """A server started by a niced caller refuses the others (a worker cannot lower its
    niceness); they run in process, and it still ends once idle."""
    env = {**served, "TASKWATCHER_SERVER_IDLE": "1"}
    first = subprocess.run(
        [BIN / "twrun", "--", "true"], env=env, preexec_fn=lambda: os.nice(5), timeout=30
    )
    assert first.returncode == 0
    folder = Path(env["XDG_RUNTIME_DIR"]) / "taskwatcher"
    (socket_path,) = wait_for(lambda: list(folder.glob("*.sock")), timeout=15)
    server = int(Path(f"{socket_path}.lock").read_text())
    give_up = time.monotonic() + 10
    while alive(server) and time.monotonic() < give_up:
        assert run_cli("twrun", "--", "true", env=env).returncode == 0  # refused: in process
        time.sleep(0.1)
    assert not alive(server)


def test_a_served_supervisor_goes_by_its_commands_name(served: dict[str, str]) -> None:
    """As in process (`pgrep twrun` finds both), though its command line is the server's."""
    server_pid(served)
    names = [
        run_cli("twrun", "--", "sh", "-c", "cat /proc/$PPID/comm", env=env).stdout
        for env in (served, {**served, "TASKWATCHER_SERVER": "0"})
    ]
    assert names == ["twrun\n", "twrun\n"]
