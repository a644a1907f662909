"""Helpers for the twrun tests: reserve through twctl, read a task's row or history record."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from taskwatcher.engine.records import Ended, Task
from taskwatcher.engine.store import open_store
from tests.helpers import run_cli

PY = sys.executable


def reserve(db: Path, *args: str) -> str:
    result = run_cli("twctl", "--db", db, "reserve", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def history(db: Path, taskid: int | str) -> Ended:
    with open_store(db) as store:
        record = store.history_of(int(taskid))
    assert record is not None, f"task {taskid} not in history"
    return record


def live_row(db: Path, taskid: int | str) -> Task | None:
    with open_store(db) as store:
        return store.get_task(int(taskid))


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path
