"""twctl facing odd input: out-of-range numbers, closed pipes, markup in paths, bad options."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import BIN, run_cli


def usage_error(*args: str | os.PathLike) -> str:
    """Run twctl expecting a usage error; returns its last stderr line."""
    result = run_cli("twctl", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("command", ["feedback", "kill", "show"])
@pytest.mark.parametrize("taskid", ["99999999999999999999", "0", "-3"])
def test_task_ids_out_of_range_are_usage_errors(db_path: Path, command: str, taskid: str) -> None:
    assert "not a task id" in usage_error("--db", db_path, command, "--", taskid)


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["history", "--json"]])
def test_a_closed_pipe_ends_quietly(db_path: Path, args: list[str]) -> None:
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [BIN / "twctl", "--db", db_path, *args],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
        )
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (0, "")


def test_watch_title_shows_brackets_in_the_path(tmp_path: Path) -> None:
    db = tmp_path / "a[/x].db"
    result = run_cli("twctl", "--db", db, "watch", "--once")
    assert result.returncode == 0, result.stderr
    assert "a[/x].db" in "".join(result.stdout.split())  # a long title wraps
