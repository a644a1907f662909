"""Shared fixtures: every test gets its own state folder, so nothing touches the user's database."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default database and cache folders into tmp_path, for subprocesses too."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("TASKWATCHER_DB", raising=False)
    return state


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database path in tmp_path; the file itself is created by whoever opens it first."""
    return tmp_path / "tasks.db"


@pytest.fixture
def stranger() -> Iterator[psutil.Process]:
    """An unrelated process, leader of its own group, alive until the test ends.

    It is a `sleep`, which SIGTERM, SIGKILL and SIGUSR1 would all end: still running
    afterwards means it received none of them.
    """
    child = subprocess.Popen(["sleep", "60"], process_group=0)
    yield psutil.Process(child.pid)
    child.kill()
    child.wait()
