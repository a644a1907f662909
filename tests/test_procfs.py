"""/proc/<pid>/stat read directly: the same facts psutil gives, for any command name."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psutil

from taskwatcher.engine.identity import CREATE_TIME_TOLERANCE, identity_of, is_same_process
from taskwatcher.engine.procfs import proc_row, process_table
from tests.helpers import wait_for


def test_a_process_reads_as_psutil_sees_it(tmp_path: Path) -> None:
    # A command name with spaces and parentheses, as a program may choose for itself.
    odd = tmp_path / "a) b (c"
    shutil.copy("/bin/sleep", odd)
    child = subprocess.Popen([odd, "30"], start_new_session=True)
    try:
        row = wait_for(lambda: (r := proc_row(child.pid)) and r.state == "S" and r)
        seen = psutil.Process(child.pid)
        assert (row.pid, row.ppid, row.pgid) == (child.pid, os.getpid(), child.pid)
        assert abs(row.create_time - seen.create_time()) <= CREATE_TIME_TOLERANCE / 10
        assert row in process_table()
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_no_longer_the_same_running_process() -> None:
    child = subprocess.Popen(["true"])
    identity = wait_for(lambda: (i := identity_of(child.pid)) and i)
    wait_for(lambda: proc_row(child.pid).zombie)
    assert not is_same_process(identity)
    assert identity_of(child.pid) == identity  # its pid stays taken until reaped
    child.wait()
    assert proc_row(child.pid) is None and identity_of(child.pid) is None
