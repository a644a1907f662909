"""`make demo`: the main job end to end, on the default database, with the real commands.

It reserves a task, launches a small program under `twrun` that reports progress through
its feedback file, shows it with `twctl list`, `watch --once` and `feedback` while it runs,
then its history row and final feedback. Every command is printed before it runs.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from taskwatcher.grammar import FeedbackWriter

BIN = Path(sys.executable).parent
STEPS = 10


def count_task() -> int:
    """The demo's task program: ten test cases, a heartbeat and a progress figure each."""
    with FeedbackWriter(os.environ["TASKWATCHER_FEEDBACK"]) as feedback:
        feedback.set("playbook", "demo")
        for step in range(1, STEPS + 1):
            feedback.set("testcase_id", f"{step:03d}")
            feedback.set("testcase_name", f"check number {step}")
            feedback.set("progress", str(step * 100 // STEPS))
            time.sleep(0.4)
        feedback.clear("testcase_name")
        feedback.set("result", "all checks passed")
    return 0


def _run(*words: str, background: bool = False) -> str | subprocess.Popen:
    """Show a command as a person would type it, run it, and echo its output."""
    print(f"\n$ {shlex.join(words)}", flush=True)
    argv = [str(BIN / words[0]), *words[1:]]
    if background:
        return subprocess.Popen(argv)
    width = {"COLUMNS": str(shutil.get_terminal_size().columns)}
    result = subprocess.run(
        argv, capture_output=True, text=True, check=True, env=os.environ | width
    )
    print(result.stdout, end="", flush=True)
    return result.stdout.strip()


def main() -> int:
    """Walk through reserve, launch, list, watch, feedback and history on the default db."""
    taskid = _run("twctl", "reserve", "--name", "demo", "--info1", "make demo")
    # `--feedback` marks a task that reports; it finds its file in $TASKWATCHER_FEEDBACK
    task = [sys.executable, "-m", "taskwatcher.cli.demo", "task", "--feedback"]
    runner = _run("twrun", "--taskid", taskid, "--timeout", "5", "--", *task, background=True)
    time.sleep(1.5)
    _run("twctl", "list")
    _run("twctl", "watch", "--once")
    _run("twctl", "feedback", taskid)
    status = runner.wait()
    print(f"(twrun exited with status {status})")
    _run("twctl", "history", "--limit", "3")
    _run("twctl", "feedback", taskid, "--pretty")
    return status


if __name__ == "__main__":
    sys.exit(count_task() if sys.argv[1:2] == ["task"] else main())
