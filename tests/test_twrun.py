"""twrun with real processes: exit codes, arguments, feedback timeouts, signals, archiving."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from taskwatcher.engine import control
from taskwatcher.engine.store import open_store
from tests.helpers import run_cli, start_cli, wait_for
from tests.run_helpers import PY, history, live_row, reserve, script


def test_exit_zero_completes(db_path: Path) -> None:
    result = run_cli("twrun", "--db", db_path, "--", "true")
    assert result.returncode == 0, result.stderr
    (record,) = open_store(db_path).history()
    assert record.outcome == "COMPLETED"
    assert record.exitcode == 0
    assert record.termsignal == "EXIT"
    assert record.taskname == "true"


def test_exit_three_fails_with_its_status(db_path: Path) -> None:
    result = run_cli("twrun", "--db", db_path, "--name", "three", "--", "sh", "-c", "exit 3")
    assert result.returncode == 3
    (record,) = open_store(db_path).history(name="three")
    assert (record.outcome, record.exitcode, record.termerror) == (
        "FAILED",
        3,
        "exit status 3",
    )


def test_arguments_pass_untouched(db_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    words = ["two words", "*", "'quoted'", '"double"', "$HOME", "a;b"]
    code = f"import sys, json; open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))"
    result = run_cli("twrun", "--db", db_path, "--", PY, "-c", code, *words, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == words


def test_command_not_found_is_127_and_failed(db_path: Path) -> None:
    result = run_cli("twrun", "--db", db_path, "--", "no-such-command-xyz")
    assert result.returncode == 127
    assert "not found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (record,) = open_store(db_path).history()
    assert record.outcome == "FAILED"
    assert "not found" in record.termerror


def test_not_executable_is_126_and_failed(db_path: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\necho hi\n")
    result = run_cli("twrun", "--db", db_path, "--", plain)
    assert result.returncode == 126
    (record,) = open_store(db_path).history()
    assert record.outcome == "FAILED"
    assert record.termerror


def test_environment_tells_the_task_where_to_report(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    out = tmp_path / "env.json"
    code = (
        "import os, json; json.dump({k: v for k, v in os.environ.items() "
        f"if k.startswith('TASKWATCHER_')}}, open({str(out)!r}, 'w'))"
    )
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    argv = ["--feedpath", feeds, "--timeout", "7"]
    result = run_cli("twrun", "--db", db_path, "--taskid", taskid, *argv, "--", PY, "-c", code)
    assert result.returncode == 0, result.stderr
    env = json.loads(out.read_text())
    assert env["TASKWATCHER_TASKID"] == taskid
    assert env["TASKWATCHER_FEEDBACK"] == str(feeds / f"feedback_{taskid}.log")
    assert env["TASKWATCHER_TIMEOUT"] == "7"


def test_feedback_file_removed_and_last_content_in_history(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path, "--name", "reporter")
    task = script(
        tmp_path,
        "report.py",
        """
        import os
        with open(os.environ["TASKWATCHER_FEEDBACK"], "w") as f:
            f.write("[info]starting\\n[progress]50\\n[info]\\n[progress]100\\n[result]ok")
        """,
    )
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--timeout", "5",
        "--", PY, task, "--feedback", f"feedback_{taskid}.log",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = history(db_path, taskid)
    assert record.feedback == {"progress": "100", "result": "ok"}
    feedback_folder = db_path.parent / "tasks-feedback"
    assert not (feedback_folder / f"feedback_{taskid}.log").exists()


def test_keep_feedback_leaves_the_file(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    code = "import os; open(os.environ['TASKWATCHER_FEEDBACK'], 'w').write('[k]v\\n')"
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", tmp_path, "--keep-feedback",
        "--", PY, "-c", code,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"feedback_{taskid}.log").read_text() == "[k]v\n"


def test_a_task_that_writes_feedback_needs_no_reservation(db_path: Path) -> None:
    """twrun reserves an id itself; the task finds its file in $TASKWATCHER_FEEDBACK."""
    script = 'echo "[progress]50" > "$TASKWATCHER_FEEDBACK"'
    result = run_cli("twrun", "--db", db_path, "--", "sh", "-c", script, "sh", "--feedback")
    assert result.returncode == 0, result.stderr
    with open_store(db_path) as store:
        (record,) = store.history()
    assert (record.outcome, record.feedback) == ("COMPLETED", {"progress": "50"})


@pytest.mark.parametrize("taskid", ["999", "expired"])
def test_taskid_not_reserved_is_refused(db_path: Path, tmp_path: Path, taskid: str) -> None:
    if taskid == "expired":
        taskid = reserve(db_path)
        assert run_cli("twctl", "--db", db_path, "kill", taskid).returncode == 0
    marker = tmp_path / "ran"
    result = run_cli("twrun", "--db", db_path, "--taskid", taskid, "--", "touch", marker)
    assert result.returncode == 125
    assert not marker.exists()


def test_missing_feedpath_is_125(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", tmp_path / "nope", "--", "true"
    )
    assert result.returncode == 125
    assert "does not exist" in result.stderr
    assert live_row(db_path, taskid).status == "RESERVED"


def test_silent_task_degrades_then_times_out(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    task = script(
        tmp_path,
        "quiet.py",
        """
        import os, time
        open(os.environ["TASKWATCHER_FEEDBACK"], "w").write("[step]one\\n")
        time.sleep(60)
        """,
    )
    runner = start_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", tmp_path,
        "--timeout", "2", "--grace", "1", "--", PY, task, "--feedback",
    )  # fmt: skip
    seen: list[str] = []
    with open_store(db_path) as store:
        while runner.poll() is None:
            row = store.get_task(int(taskid))
            if row and (not seen or seen[-1] != row.status):
                seen.append(row.status)
            time.sleep(0.02)
    assert runner.returncode == 124, runner.stderr.read()
    assert [s for s in seen if s != "RESERVED"] == ["RUNNING", "SILENT", "STALLED"]
    record = history(db_path, taskid)
    assert record.outcome == "TIMEOUT"
    assert record.termerror == "no heartbeat for 2 s"
    assert record.feedback == {"step": "one"}


def _wait_running(db: Path, taskid: str) -> dict:
    return wait_for(
        lambda: (row := live_row(db, taskid)) and row.status == "RUNNING" and row.pid and row
    )


def test_child_ignoring_sigterm_is_killed_after_grace(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)"
    )
    runner = start_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--grace", "0.5", "--", PY, "-c", code
    )
    wait_for(ready.exists)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=20) == 128 + signal.SIGKILL
    record = history(db_path, taskid)
    assert (record.outcome, record.termsignal) == ("KILLED", "SIGKILL")


def test_grandchild_goes_with_the_task(db_path: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    taskid = reserve(db_path)
    runner = start_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--grace", "1",
        "--", "sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait",
    )  # fmt: skip
    child_pid = _wait_running(db_path, taskid).pid
    grandchild = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip()))
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=20) == 128 + signal.SIGTERM
    for pid in (child_pid, grandchild):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    record = history(db_path, taskid)
    assert record.outcome == "KILLED"
    assert "SIGTERM" in record.termerror


def test_kill_request_through_the_store(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path, "--name", "sleeper")
    runner = start_cli("twrun", "--db", db_path, "--taskid", taskid, "--", "sleep", "60")
    _wait_running(db_path, taskid)
    with open_store(db_path) as store:
        assert control.request_stop(store, int(taskid), "tester@here") is None
        (record,) = control.wait_ended(store, [int(taskid)], timeout=20)
    assert runner.wait(timeout=20) == 128 + signal.SIGTERM
    assert record.outcome == "KILLED"
    assert record.killed_by == "tester@here"
    assert record.termerror == "killed on request by tester@here"


def test_timeout_applies_to_a_task_that_writes_no_feedback(db_path: Path) -> None:
    """The spec's timeout: no heartbeat (feedback by default) for that long kills the task."""
    result = run_cli("twrun", "--db", db_path, "--timeout", "0.5", "--", "sleep", "30")
    assert result.returncode == 124, result.stderr
    (record,) = open_store(db_path).history()
    assert (record.outcome, record.termerror) == ("TIMEOUT", "no heartbeat for 0.5 s")
    assert record.duration < 10


def test_leftover_background_process_is_stopped(db_path: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    result = run_cli(
        "twrun", "--db", db_path, "--grace", "1",
        "--", "sh", "-c", f"sleep 60 & echo $! > {pidfile}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    leftover = int(pidfile.read_text())
    assert not psutil.pid_exists(leftover) or psutil.Process(leftover).status() == "zombie"


def test_usage_error_is_125(db_path: Path) -> None:
    result = run_cli("twrun", "--db", db_path, "--timeout", "soon", "--", "true")
    assert result.returncode == 125
    assert "Traceback" not in result.stderr
    assert os.path.exists(db_path) is False


def test_unique_reserves_the_name_itself_and_refuses_a_name_held(db_path: Path) -> None:
    holder = reserve(db_path, "--name", "nightly", "--unique")
    refused = run_cli("twrun", "--db", db_path, "--unique", "--name", "nightly", "--", "true")
    assert refused.returncode == 125
    assert f"task {holder}" in refused.stderr and "nightly" in refused.stderr
    assert run_cli("twctl", "--db", db_path, "kill", holder).returncode == 0
    ran = run_cli("twrun", "--db", db_path, "--unique", "--name", "nightly", "--", "true")
    assert ran.returncode == 0, ran.stderr
    assert history(db_path, int(holder) + 1).taskname == "nightly"


@pytest.mark.parametrize("words", [["--unique"], ["--unique", "--name", "x", "--taskid", "1"]])
def test_unique_needs_a_name_and_no_reserved_id(db_path: Path, words: list[str]) -> None:
    result = run_cli("twrun", "--db", db_path, *words, "--", "true")
    assert result.returncode == 125
    assert result.stderr == "twrun: a unique task needs a name, and no reserved id\n"
