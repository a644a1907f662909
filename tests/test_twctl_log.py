"""`twctl log` and `twctl follow`: a task's captured output, read back safely; `clear` removes
it; `show` shows its end.

Real twrun and twctl processes on a real database. Tasks that must be seen running wait for
a gate (a file the test makes), so a slow machine delays a test but never changes its result.
A row's log path is data: forged ones must be refused without a traceback and without
opening or removing the file they name.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault_helpers import PY, assert_one_line, query, reserve, twrun, wait_running
from tests.helpers import BIN, on_a_terminal, run_cli, wait_for

#: A task that writes to stdout and stderr in turn, each line flushed before the next.
INTERLEAVED = """
import sys, time
for i in range(3):
    print("out", i, flush=True); time.sleep(0.02)
    print("err", i, file=sys.stderr, flush=True); time.sleep(0.02)
"""
INTERLEAVED_OUTPUT = "".join(f"out {i}\nerr {i}\n" for i in range(3))
#: Numbered lines of 100 bytes (argv[1] of them, argv[2] seconds apart), then exit argv[3].
NUMBERED = """
import sys, time
count, pause, status = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    print(f"{i:04d}".ljust(99, "."), flush=True)
    time.sleep(pause)
sys.exit(status)
"""


def numbered(count: int) -> str:
    return "".join(f"{i:04d}".ljust(99, ".") + "\n" for i in range(count))


def twctl(db: Path, *args: str | int, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run_cli("twctl", "--db", db, *map(str, args), **kwargs)


def run_task(db: Path, *command: str, options: tuple[str, ...] = ()) -> int:
    """A task run to its end by twrun (its own output only logged); its id."""
    result = run_cli("twrun", "--db", db, "--output", "log", *options, "--", *command)
    (record,) = json.loads(twctl(db, "history", "--json", "--limit", "1").stdout)
    assert record["exitcode"] == result.returncode, result.stderr
    return record["taskid"]


def logs_folder(db: Path) -> Path:
    return db.with_name(f"{db.stem}-logs")


def refused(result: subprocess.CompletedProcess[str], taskid: int) -> str:
    """The one line of a refused log, which names the task."""
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    line = assert_one_line(result.stderr, f"twctl: task {taskid}: its log ")
    assert "is not a taskwatcher log" in line
    return line


def forge_logfile(db: Path, taskid: int, logfile: str) -> None:
    query(db, "UPDATE history SET logfile = ? WHERE taskid = ?", (logfile, taskid))


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "gate"


@pytest.fixture
def background(db_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; whatever still runs at its end is stopped."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.communicate(timeout=30)


def start(background: list[subprocess.Popen[str]], *argv: str | int | Path) -> subprocess.Popen:
    process = subprocess.Popen(
        list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    background.append(process)
    return process


def test_log_prints_stdout_and_stderr_in_order(db_path: Path) -> None:
    taskid = run_task(db_path, PY, "-c", INTERLEAVED)
    result = twctl(db_path, "log", taskid)
    assert (result.returncode, result.stdout, result.stderr) == (0, INTERLEAVED_OUTPUT, "")
    assert twctl(db_path, "log", taskid, "-n", "3").stdout == "err 1\nout 2\nerr 2\n"
    assert twctl(db_path, "log", taskid, "-n", "100").stdout == INTERLEAVED_OUTPUT
    assert json.loads(twctl(db_path, "log", taskid, "--json").stdout) == {
        "taskid": taskid,
        "logfile": str(logs_folder(db_path) / f"task_{taskid}.log"),
        "lines": INTERLEAVED_OUTPUT.splitlines(),
    }
    assert json.loads(twctl(db_path, "log", taskid, "-n", "2", "--json").stdout)["lines"] == [
        "out 2",
        "err 2",
    ]


def test_log_is_binary_safe_when_piped_and_escaped_on_a_terminal(db_path: Path) -> None:
    raw = b"\x1b[2Jred\tcaf\xc3\xa9 \xff\r\n"
    taskid = run_task(db_path, PY, "-c", f"import sys; sys.stdout.buffer.write({raw!r})")
    argv = [BIN / "twctl", "--db", db_path, "log", taskid]
    piped = subprocess.run(list(map(str, argv)), capture_output=True)
    assert piped.stdout == raw
    lines = json.loads(twctl(db_path, "log", taskid, "--json").stdout)["lines"]
    assert lines == ["\x1b[2Jred\tcafé \\xff\r"]
    shown = on_a_terminal(BIN / "twctl", "--db", db_path, "log", taskid)
    assert "\\x1b[2Jred\tcafé \\xff\\r" in shown and "\x1b[2J" not in shown


def test_log_of_a_live_task(db_path: Path, gate: Path, background: list) -> None:
    taskid = reserve(db_path)
    command = ["sh", "-c", 'echo started; while [ ! -e "$0" ]; do sleep 0.05; done', str(gate)]
    start(background, BIN / "twrun", "--db", db_path, "--taskid", taskid, "--", *command)
    wait_running(db_path, taskid)
    wait_for(lambda: twctl(db_path, "log", taskid).stdout == "started\n")
    gate.touch()
    assert background[0].wait(timeout=30) == 0


def test_a_rotated_log_keeps_its_last_two_parts(db_path: Path) -> None:
    options = ("--log-max-bytes", "1000")
    taskid = run_task(db_path, PY, "-c", NUMBERED, "50", "0", "0", options=options)
    folder = logs_folder(db_path)
    sizes = [path.stat().st_size for path in folder.glob(f"task_{taskid}.log*")]
    assert len(sizes) == 2 and sum(sizes) <= 2000
    result = twctl(db_path, "log", taskid)
    assert result.returncode == 0
    current = (folder / f"task_{taskid}.log").read_text()
    assert result.stdout == (folder / f"task_{taskid}.log.1").read_text() + current
    assert numbered(50).endswith(result.stdout) and len(result.stdout) == sum(sizes)
    line = assert_one_line(result.stderr, f"twctl: task {taskid}'s log was rotated")
    assert f"last {sum(sizes)} bytes" in line
    # The last lines straddle the two files when the current one is short.
    tail = twctl(db_path, "log", taskid, "-n", "12")
    assert tail.stdout == "".join(numbered(50).splitlines(keepends=True)[-12:])
    assert tail.stderr == ""


def test_a_task_whose_output_was_not_captured_has_no_log(db_path: Path) -> None:
    result = run_cli("twrun", "--db", db_path, "--output", "inherit", "--", "true")
    assert result.returncode == 0
    for command in ("log", "follow"):
        result = twctl(db_path, command, 1)
        assert (result.returncode, result.stdout) == (1, "")
        line = assert_one_line(result.stderr, "twctl: ")
        assert line == "twctl: task 1 has no log (its output was not captured)"
    result = twctl(db_path, "log", 99)
    assert assert_one_line(result.stderr, "twctl: ") == "twctl: no task 99"


def test_clear_removes_the_logs_and_leaves_look_alikes(db_path: Path, tmp_path: Path) -> None:
    kept, removed, planted = (run_task(db_path, "echo", str(n)) for n in range(3))
    folder = logs_folder(db_path)
    query(db_path, "UPDATE history SET endtime = 4e9 WHERE taskid = ?", (kept,))
    # A look-alike: the name of a log, but a second link to a file of the user's.
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    (folder / f"task_{planted}.log").unlink()
    os.link(precious, folder / f"task_{planted}.log")
    result = twctl(db_path, "clear", "--before", "3000000000")
    assert (result.returncode, result.stdout) == (0, "2 history row(s) removed\n")
    assert assert_one_line(result.stderr, "twctl: 1 log(s) left in place")
    assert not (folder / f"task_{removed}.log").exists()
    assert (folder / f"task_{planted}.log").read_text() == precious.read_text() == "keep me\n"
    assert twctl(db_path, "log", kept).stdout == "0\n"
    assert twctl(db_path, "clear").stdout == "1 history row(s) removed\n"
    assert sorted(path.name for path in folder.iterdir()) == [f"task_{planted}.log"]


def test_a_cleared_log_is_said_to_be_removed(db_path: Path) -> None:
    taskid = run_task(db_path, "echo", "hi")
    (logs_folder(db_path) / f"task_{taskid}.log").unlink()
    result = twctl(db_path, "log", taskid)
    assert result.returncode == 1
    line = assert_one_line(result.stderr, "twctl: ")
    assert line == f"twctl: task {taskid} has no log (its log was removed)"


@pytest.mark.parametrize("forgery", ["other-file", "symlink", "hard-link", "fifo", "shared-dir"])
def test_a_forged_log_path_is_refused(db_path: Path, tmp_path: Path, forgery: str) -> None:
    taskid = run_task(db_path, "echo", "hi")
    secret = tmp_path / "secret"
    secret.write_text("the secret\n")
    log = logs_folder(db_path) / f"task_{taskid}.log"
    log.unlink()
    if forgery == "other-file":
        forge_logfile(db_path, taskid, str(secret))
    elif forgery == "symlink":
        log.symlink_to(secret)
    elif forgery == "hard-link":
        os.link(secret, log)
    elif forgery == "fifo":
        os.mkfifo(log)  # opened, it would block the reader forever
    else:
        shared = tmp_path / "shared"
        shared.mkdir()
        shared.chmod(0o777)  # others may swap files in it: no sticky bit
        log = shared / log.name
        log.write_text("planted\n")
        forge_logfile(db_path, taskid, str(log))
    for command in ("log", "follow"):
        result = twctl(db_path, command, taskid, timeout=20)
        refused(result, taskid)
        assert "secret" not in result.stdout
    result = twctl(db_path, "clear")
    assert assert_one_line(result.stderr, "twctl: 1 log(s) left in place")
    assert secret.read_text() == "the secret\n"
    assert os.path.lexists(log) or forgery == "other-file"


def test_a_refusal_escapes_the_forged_path(db_path: Path) -> None:
    taskid = run_task(db_path, "echo", "hi")
    forge_logfile(db_path, taskid, "/tmp/\x1b[2J/x.log")
    line = refused(twctl(db_path, "log", taskid), taskid)
    assert "\\x1b[2J" in line and "\x1b" not in line


def test_follow_prints_everything_and_exits_with_the_task_status(
    db_path: Path, background: list
) -> None:
    taskid = reserve(db_path)
    follower = start(background, BIN / "twctl", "--db", db_path, "follow", taskid)
    runner = start(
        background,
        *(BIN / "twrun", "--db", db_path, "--taskid", taskid, "--output", "log"),
        *("--", PY, "-c", NUMBERED, "10", "0.15", "3"),
    )
    stdout, stderr = follower.communicate(timeout=30)
    assert (follower.returncode, stdout, stderr) == (3, numbered(10), "")
    assert runner.wait(timeout=30) == 3


def test_follow_through_rotations(db_path: Path, background: list) -> None:
    taskid = reserve(db_path)
    follower = start(background, BIN / "twctl", "--db", db_path, "follow", taskid)
    start(
        background,
        *(BIN / "twrun", "--db", db_path, "--taskid", taskid, "--output", "log"),
        *("--log-max-bytes", "1000", "--", PY, "-c", NUMBERED, "40", "0.04", "0"),
    )
    stdout, stderr = follower.communicate(timeout=30)
    assert (follower.returncode, stdout, stderr) == (0, numbered(40), "")
    assert len(list(logs_folder(db_path).glob(f"task_{taskid}.log*"))) == 2


def test_follow_of_a_killed_task(db_path: Path, gate: Path, background: list) -> None:
    taskid = reserve(db_path)
    command = ["sh", "-c", 'echo ready; while [ ! -e "$0" ]; do sleep 0.05; done', str(gate)]
    runner = start(background, BIN / "twrun", "--db", db_path, "--taskid", taskid, "--", *command)
    wait_running(db_path, taskid)
    follower = start(background, BIN / "twctl", "--db", db_path, "follow", taskid)
    assert follower.stdout is not None and follower.stdout.readline() == "ready\n"
    assert twctl(db_path, "kill", taskid).returncode == 0
    stdout, _ = follower.communicate(timeout=30)
    assert stdout == ""
    assert follower.returncode == runner.wait(timeout=30) == 128 + signal.SIGTERM


def test_ctrl_c_leaves_follow_quietly(db_path: Path, gate: Path, background: list) -> None:
    taskid = reserve(db_path)
    command = ["sh", "-c", 'echo ready; while [ ! -e "$0" ]; do sleep 0.05; done', str(gate)]
    start(background, BIN / "twrun", "--db", db_path, "--taskid", taskid, "--", *command)
    wait_running(db_path, taskid)
    follower = start(background, BIN / "twctl", "--db", db_path, "follow", taskid)
    assert follower.stdout is not None and follower.stdout.readline() == "ready\n"
    follower.send_signal(signal.SIGINT)
    assert follower.communicate(timeout=30) == ("", "")
    assert follower.returncode == 128 + signal.SIGINT
    gate.touch()


def test_follow_ends_lost_when_the_supervisor_dies(db_path: Path, background: list) -> None:
    taskid = reserve(db_path)
    runner = twrun(db_path, taskid, command=["sh", "-c", "echo up; sleep 60"])
    background.append(runner)
    wait_running(db_path, taskid)
    follower = start(background, BIN / "twctl", "--db", db_path, "follow", taskid)
    assert follower.stdout is not None and follower.stdout.readline() == "up\n"
    runner.send_signal(signal.SIGKILL)
    assert follower.wait(timeout=30) == 125


def test_show_gives_the_end_of_the_output_escaped(db_path: Path) -> None:
    taskid = run_task(db_path, PY, "-c", INTERLEAVED + "print('\\x1b[31mred')")
    shown = twctl(db_path, "show", taskid).stdout.splitlines()
    (first,) = [n for n, line in enumerate(shown) if line.startswith("output_tail ")]
    indent = shown[first].index("out 0")
    tail = [
        shown[first],
        *itertools.takewhile(lambda line: line[:indent].isspace(), shown[first + 1 :]),
    ]
    assert [line[indent:] for line in tail] == [
        *INTERLEAVED_OUTPUT.splitlines(),
        "\\x1b[31mred",
    ]
    on_terminal = on_a_terminal(BIN / "twctl", "--db", db_path, "show", taskid)
    assert "\\x1b[31mred" in on_terminal and "\x1b[31m" not in on_terminal
    details = json.loads(twctl(db_path, "show", taskid, "--json").stdout)
    assert details["output_tail"] == INTERLEAVED_OUTPUT + "\x1b[31mred"
    assert details["logfile"] == str(logs_folder(db_path) / f"task_{taskid}.log")


def test_show_gives_the_log_of_a_live_task(db_path: Path, gate: Path, background: list) -> None:
    taskid = reserve(db_path)
    command = ["sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(gate)]
    start(background, BIN / "twrun", "--db", db_path, "--taskid", taskid, "--", *command)
    wait_running(db_path, taskid)
    logfile = str(logs_folder(db_path) / f"task_{taskid}.log")
    assert json.loads(twctl(db_path, "show", taskid, "--json").stdout)["logfile"] == logfile
    assert ["logfile", logfile] in [
        line.split() for line in twctl(db_path, "show", taskid).stdout.splitlines()
    ]
    gate.touch()


def test_log_of_a_finished_task_exits_as_its_twrun_did(db_path: Path, tmp_path: Path) -> None:
    """DESIGN.md: `log` of a task that ended exits with the task's twrun-style status."""
    program = tmp_path / "numbered.py"
    program.write_text(NUMBERED)
    taskid = run_task(db_path, PY, str(program), "2", "0", "3")
    result = twctl(db_path, "log", taskid)
    assert (result.returncode, result.stdout) == (3, numbered(2))
