"""twrun with real processes: nohup, pre-launch failures, feedback paths, clocks, options."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import start_cli, wait_for
from tests.test_twrun import history, live_row, reserve


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_sighup_ignored_by_the_starter_stays_ignored(db_path: Path) -> None:
    taskid = reserve(db_path)
    runner = start_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--grace", "1", "--", "sleep", "60",
        preexec_fn=_ignore_sighup,
    )  # fmt: skip
    wait_for(lambda: (row := live_row(db_path, taskid)) and row["pid"])
    runner.send_signal(signal.SIGHUP)
    assert live_row(db_path, taskid)["status"] == "RUNNING"
    runner.send_signal(signal.SIGTERM)  # had SIGHUP been caught, it would be the one seen
    assert runner.wait(timeout=20) == 128 + signal.SIGTERM, runner.stderr.read()
    record = history(db_path, taskid)
    assert (record["outcome"], record["termerror"]) == ("KILLED", "twrun received SIGTERM")
