"""twrun with real processes: nohup, pre-launch failures, feedback paths, clocks, options."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.store import Store
from taskwatcher.engine.supervisor import LaunchRequest, run_task
from tests.helpers import run_cli, start_cli, wait_for
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


def test_task_without_feedback_needs_no_feedback_folder(db_path: Path) -> None:
    (db_path.parent / "tasks-feedback").write_text("a file where the folder would go")
    result = run_cli("twrun", "--db", db_path, "--", "true")
    assert result.returncode == 0, result.stderr
    with Store.open(db_path) as store:
        assert store.list_tasks() == []
        (record,) = store.history()
    assert record["outcome"] == "COMPLETED"


def _refuse_claim(self: Store, taskid: int, **launch: object) -> None:
    raise StoreError("database is locked")


def test_failed_claim_cancels_the_reservation_twrun_made(db_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    Store.open(db_path).close()
    pid = os.fork()
    if pid == 0:  # the child plays twrun and never returns into pytest
        code = 0
        try:
            Store.start = _refuse_claim  # type: ignore[method-assign]
            with Store.open(db_path) as store:
                run_task(store, LaunchRequest(argv=["touch", str(marker)]))
        except StoreError:
            code = 125
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 125
    assert not marker.exists()
    with Store.open(db_path) as store:
        assert store.list_tasks() == []
        (record,) = store.history()
    assert record["outcome"] == "EXPIRED"
    assert record["termerror"] == "reservation cancelled by twrun: database is locked"


def test_leftover_feedback_file_removed_only_after_the_claim(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    leftover = tmp_path / f"feedback_{taskid}.log"
    (leftover / "inside").mkdir(parents=True)  # a folder in its place cannot be unlinked
    marker = tmp_path / "ran"
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", tmp_path,
        "--", "touch", marker, "--feedback",
    )  # fmt: skip
    assert result.returncode == 125
    assert "cannot remove the old feedback file" in result.stderr
    assert not marker.exists()
    assert live_row(db_path, taskid) is None
    record = history(db_path, taskid)
    assert (record["outcome"], record["exitcode"]) == ("FAILED", 125)
    assert record["termerror"].startswith(f"cannot remove the old feedback file {leftover}")
