"""Helpers for tests that drive the console scripts as subprocesses."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

#: The keys DESIGN.md promises first in `twctl list --json` and `twctl history --json`.
LIST_KEYS = [
    "taskid",
    "name",
    "info1",
    "info2",
    "info3",
    "pid",
    "status",
    "feedback",
    "reservetime",
    "starttime",
    "duration",
    "lastupdate",
    "timer",
    "timeout",
]
HISTORY_KEYS = [
    "id",
    "taskid",
    "taskname",
    "info1",
    "info2",
    "info3",
    "termsignal",
    "termerror",
    "exitcode",
    "outcome",
    "starttime",
    "endtime",
    "duration",
    "feedback",
]


def run_cli(
    command: str, *args: str | os.PathLike, timeout: float = 30, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run an installed console script (twparse, twrun, twctl) the way a user would."""
    return subprocess.run(
        [str(BIN / command), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02):
    """Poll until predicate() is truthy and return its value; fail the test after `timeout`."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def start_cli(command: str, *args: str | os.PathLike, **kwargs) -> subprocess.Popen[str]:
    """Start a console script in the background (for tasks the test watches while they run)."""
    return subprocess.Popen(
        [str(BIN / command), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def on_a_terminal(*argv: str | Path) -> str:
    """What a command prints on a terminal: run it in a pseudo-terminal made by script(1)."""
    if shutil.which("script") is None:
        pytest.skip("script(1) is not installed")
    command = shlex.join(map(str, argv))
    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "300", "TERM": "xterm"},
    )
    assert result.returncode == 0, result.stdout
    return result.stdout


#: The feedback file of the original package's description, and the JSON it gives.
SPEC_EXAMPLE = """\
[info]Starting test
[playbook]myPlaybook
[info]
[heartbeat]
[testcase_id]001
[testcase_name]Initialization
[progress]12
[progress]15
[testcase_id]002
[testcase_name]Setting up topology
[progress]10
"""

SPEC_OUTPUT = {
    "playbook": "myPlaybook",
    "testcase_id": "002",
    "testcase_name": "Setting up topology",
    "progress": "10",
}
