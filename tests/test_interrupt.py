"""An early Ctrl-C of a console script: never a crash, never a traceback from our code.

What runs before the first line of `taskwatcher.cli` is the interpreter's: its start-up,
site and the install's path hooks (an editable install imports pathlib, re and importlib
there), and the import system finding `taskwatcher.cli`. A Ctrl-C then gets Python's own
report, which names none of our files; one that names them is ours to prevent.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

import taskwatcher.engine
import taskwatcher.grammar
from taskwatcher.engine.store import open_store
from tests.helpers import BIN, run_cli, start_cli, wait_for

RUNS = 60
AT_ONCE = 4
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: Our code's folders. taskwatcher.cli is located, not imported: importing it sets up SIGINT.
OUR_CODE = [
    str(Path(importlib.util.find_spec("taskwatcher.cli").origin).parent),
    str(Path(taskwatcher.engine.__file__).parent),
    str(Path(taskwatcher.grammar.__file__).parent),
]


def interrupted(argv: list[str]) -> tuple[int, str]:
    """Start a command, send it SIGINT 5 to 60 ms later; its exit status and stderr."""
    child = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    time.sleep(random.uniform(0.005, 0.060))
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    return child.returncode, stderr.decode(errors="replace")


def through_our_code(stderr: str) -> bool:
    """A traceback naming our files, except one raised at `line 0` of a module: Python checks
    for signals as a module starts, before its first line, so a Ctrl-C that came while the
    import system was still finding taskwatcher.cli is reported there (still Python's)."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', stderr)
    if not frames or frames[-1][1] == "0":
        return False
    return "Traceback" in stderr and any(folder in stderr for folder in OUR_CODE)


@pytest.fixture
def commands(db_path: Path, tmp_path: Path) -> dict[str, list[str]]:
    feedback = tmp_path / "feedback.log"
    feedback.write_text("[progress]1\n")
    open_store(db_path).close()  # what twctl reads: interrupted while it reads, not refused
    return {
        "twctl": [str(BIN / "twctl"), "--db", str(db_path), "list"],
        "twrun": [str(BIN / "twrun"), "--db", str(db_path), "--", "sleep", "5"],
        "twparse": [str(BIN / "twparse"), str(feedback)],
    }


@pytest.mark.parametrize("command", ["twctl", "twrun", "twparse"])
def test_an_early_ctrl_c_never_crashes_or_prints_our_traceback(
    commands: dict[str, list[str]], command: str
) -> None:
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(interrupted, [commands[command]] * RUNS))
    assert not [code for code, _ in results if code == -signal.SIGSEGV], results
    ours = [stderr for _, stderr in results if through_our_code(stderr)]
    assert not ours, ours[0]
    loud = [stderr for code, stderr in results if code == EXIT_INTERRUPTED and stderr]
    assert not loud, loud[0]


def live_pid(db: Path) -> int | None:
    # Empty until twrun has made the database: a missing one named by --db is an error.
    tasks = json.loads(run_cli("twctl", "--db", db, "list", "--json").stdout or "[]")
    return tasks[0]["pid"] if tasks else None


STUBBORN = 'trap "" TERM; sleep 60'


@pytest.fixture
def stubborn_task(db_path: Path):
    """A running task that ignores SIGTERM, so `twctl kill` waits its whole --grace."""
    runner = subprocess.Popen(
        [BIN / "twrun", "--db", db_path, "--grace", "30", "--", "sh", "-c", STUBBORN],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid = wait_for(lambda: live_pid(db_path))
    wait_for(lambda: psutil.Process(pid).children())  # sh has started sleep
    yield 1
    supervisor = psutil.Process(runner.pid)
    for process in [supervisor, *supervisor.children(recursive=True)]:
        process.kill()
    runner.wait(timeout=30)


def test_ctrl_c_while_a_command_works_exits_130_quietly(db_path: Path, stubborn_task: int) -> None:
    killer = start_cli("twctl", "--db", db_path, "kill", str(stubborn_task), "--wait", "30")
    time.sleep(1)
    killer.send_signal(signal.SIGINT)
    _, stderr = killer.communicate(timeout=30)
    assert (killer.returncode, stderr) == (EXIT_INTERRUPTED, "")


def test_an_ignored_ctrl_c_stays_ignored(db_path: Path) -> None:
    """Started with SIGINT ignored (`nohup`, a background job), a command does not see it."""
    child = subprocess.Popen(
        [BIN / "twrun", "--db", db_path, "--", "sleep", "1"],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        stderr=subprocess.PIPE,
    )
    for _ in range(10):
        time.sleep(0.05)
        child.send_signal(signal.SIGINT)
    assert child.wait(timeout=30) == 0 and not child.stderr.read()
