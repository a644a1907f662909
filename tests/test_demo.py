"""`make demo` runs the main job end to end on the default database (here: the test's own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_a_task_through_every_view(isolated_state: Path) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "taskwatcher.cli.demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "warning" not in shown.stderr
    for command in ("twctl reserve", "twrun --taskid 1", "twctl list", "twctl watch --once"):
        assert f"$ {command}" in shown.stdout
    assert "RUNNING" in shown.stdout and "COMPLETED" in shown.stdout
    final = shown.stdout[shown.stdout.rindex("{") :]
    assert json.loads(final)["result"] == "all checks passed"
    assert (isolated_state / "taskwatcher" / "tasks.db").exists()
