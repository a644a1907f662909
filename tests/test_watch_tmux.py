"""`twctl watch` as a person sees it: in tmux, with a task whose progress moves."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import BIN, run_cli, start_cli, wait_for
from tests.tmux_helpers import Tmux, needs_tmux

pytestmark = needs_tmux
PERCENT = re.compile(r"(\d+\.\d)%")


@pytest.fixture
def tmux(tmp_path: Path):
    with Tmux(tmp_path / "tmux.sock", "watch") as server:
        yield server


def progress_task(db: Path, tmp_path: Path) -> subprocess.Popen:
    task = tmp_path / "moving.py"
    task.write_text(
        textwrap.dedent("""
        import os, time
        from taskwatcher.grammar import FeedbackWriter
        with FeedbackWriter(os.environ["TASKWATCHER_FEEDBACK"]) as feedback:
            for step in range(1, 201):
                feedback.set("testcase_name", f"case {step}")
                feedback.set("progress", str(step / 2))
                time.sleep(0.1)
    """)
    )
    taskid = run_cli("twctl", "--db", db, "reserve", "--name", "mover").stdout.strip()
    return start_cli(
        "twrun",
        "--db",
        db,
        "--taskid",
        taskid,
        "--timeout",
        "30",
        "--",
        sys.executable,
        task,
        "--feedback",
    )


@pytest.mark.parametrize("leave_with", ["q", "C-c"])
def test_watch_shows_moving_progress_and_leaves_cleanly(
    tmux: Tmux, db_path: Path, tmp_path: Path, leave_with: str
) -> None:
    runner = progress_task(db_path, tmp_path)
    watch = shlex.join([str(BIN / "twctl"), "--db", str(db_path), "watch"])
    shell = f"{watch}; echo WATCH-EXIT=$?; stty -a | tr ' ' '\\n' | grep -x -- '-*icanon'; sleep 60"
    tmux("new-session", "-d", "-s", "watch", "-x", "150", "-y", "30", shell)
    try:
        first = wait_for(lambda: (s := tmux.screen()) and PERCENT.search(s) and "case" in s and s)
        assert "mover" in first and "RUNNING" in first
        assert "━" in first  # the progress bar itself
        start = float(PERCENT.search(first)[1])
        wait_for(lambda: (m := PERCENT.search(tmux.screen())) and float(m[1]) > start)
        tmux("send-keys", "-t", "watch", leave_with)
        after = wait_for(lambda: "WATCH-EXIT=" in (s := tmux.screen()) and "icanon" in s and s)
        assert "WATCH-EXIT=0" in after
        assert "\nicanon" in after and "-icanon" not in after  # terminal back in line mode
    finally:
        runner.terminate()
        runner.wait(timeout=20)
