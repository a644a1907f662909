"""What the fault-injection tests share: commands with their exit checks, tasks, process groups.

Everything runs for real: console scripts as subprocesses, sqlite files in tmp_path, tasks
that are real processes. Nothing here reaches into the code under test.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import BIN, run_cli, wait_for

PY = sys.executable


def stop_between_writes(process: subprocess.Popen, db: Path) -> None:
    """SIGSTOP a process that writes to `db` at a moment it holds no lock on it.

    Stopped inside a transaction (or a read), it would keep every writer out for as long as
    it stays stopped: tried again until an exclusive lock is free at once.
    """
    while True:
        process.send_signal(signal.SIGSTOP)
        with closing(sqlite3.connect(db, timeout=0.2, isolation_level=None)) as probe:
            try:
                probe.execute("BEGIN EXCLUSIVE")
            except sqlite3.OperationalError:
                process.send_signal(signal.SIGCONT)
                continue
            probe.execute("ROLLBACK")
            return


def assert_one_line(stderr: str, prefix: str) -> str:
    """A failing command must explain itself in one line, never with a traceback."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    return lines[0]


def twctl(db: Path, *args: str | os.PathLike, code: int = 0, **kwargs: Any) -> str:
    """Run twctl, check its exit status (and the one-line error on failure), return stdout."""
    result = run_cli("twctl", "--db", db, *args, **kwargs)
    assert result.returncode == code, (result.stdout, result.stderr)
    if code:
        assert_one_line(result.stderr, "twctl: ")
    return result.stdout


def twctl_json(db: Path, *args: str) -> Any:
    return json.loads(twctl(db, *args, "--json"))


def reserve(db: Path, *args: str) -> int:
    return int(twctl(db, "reserve", *args))


def twrun(
    db: Path, taskid: int, *options: str | os.PathLike, command: Sequence[str], **kwargs: Any
) -> subprocess.Popen[str]:
    """Start `twrun --taskid ID OPTIONS -- COMMAND` in the background, its output piped."""
    argv = [BIN / "twrun", "--db", db, "--taskid", taskid, *options, "--", *command]
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen(list(map(str, argv)), **(streams | kwargs))


def query(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
    """One statement on the database with plain sqlite3, outside the store's code."""
    with closing(sqlite3.connect(db, timeout=10, isolation_level=None)) as connection:
        return connection.execute(sql, params).fetchall()


def live_row(db: Path, taskid: int) -> dict[str, Any] | None:
    with closing(sqlite3.connect(db, timeout=10)) as connection:
        connection.row_factory = sqlite3.Row
        row = connection.execute("SELECT * FROM tasks WHERE id = ?", (taskid,)).fetchone()
    return None if row is None else dict(row)


def places(db: Path, taskid: int) -> tuple[int, int]:
    """How many live rows and how many history rows the task has."""
    ((live,),) = query(db, "SELECT count(*) FROM tasks WHERE id = ?", (taskid,))
    ((ended,),) = query(db, "SELECT count(*) FROM history WHERE taskid = ?", (taskid,))
    return live, ended


def wait_running(db: Path, taskid: int, status: str = "RUNNING") -> dict[str, Any]:
    """The live row once the supervisor has recorded the launched process, not just its claim."""
    return wait_for(
        lambda: (row := live_row(db, taskid)) and row["status"] == status and row["pid"] and row
    )


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group pgid."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def runs(process: psutil.Process) -> bool:
    """Still the same process (create time included) and not a zombie."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_at_end(request: pytest.FixtureRequest, pid: int) -> psutil.Process:
    """SIGKILL the process when the test ends, if it still runs, so a failure leaks nothing."""
    process = psutil.Process(pid)

    def finish() -> None:
        if runs(process):
            process.kill()

    request.addfinalizer(finish)
    return process


#: Runs argv[2:] and writes its peak resident memory (KiB) to argv[1], exits with its status.
PEAK_RSS = """
import resource, subprocess, sys
status = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(status if status >= 0 else 128 - status)
"""


def measured(
    argv: Sequence[str | os.PathLike], timeout: float = 60, **kwargs: Any
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command to its end: its outputs, and its own peak resident memory in MB.

    A small Python process starts it and reads its rusage. Started from the test process,
    the command's ru_maxrss would begin at the test's own size, which a forked child
    inherits as its peak, and hide the command's real use. A hang is killed after timeout.
    """
    with tempfile.NamedTemporaryFile() as peak:
        child = subprocess.Popen(
            [PY, "-c", PEAK_RSS, peak.name, *map(str, argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            process_group=0,
            **kwargs,
        )
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            raise AssertionError(f"{argv} still ran after {timeout} s") from None
        kib = int(Path(peak.name).read_text())
    return subprocess.CompletedProcess(argv, child.returncode, stdout, stderr), kib / 1024
