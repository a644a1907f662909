"""twrun with real processes: nohup, pre-launch failures, feedback paths, clocks, options."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.feedbackfile import feedback_elsewhere
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.machine import TaskState
from taskwatcher.engine.records import Launch
from taskwatcher.engine.request import LaunchRequest
from taskwatcher.engine.sources import HEARTBEAT_CHECK_INTERVAL, heartbeat_on_monotonic
from taskwatcher.engine.sqlite_store import SqliteStore
from taskwatcher.engine.stopping import StopReason, end_of_task
from taskwatcher.engine.store import open_store
from taskwatcher.engine.supervisor import run_task
from tests.helpers import run_cli, start_cli, wait_for
from tests.run_helpers import PY, history, live_row, reserve


def _ignore_sighup() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_sighup_ignored_by_the_starter_stays_ignored(db_path: Path) -> None:
    taskid = reserve(db_path)
    runner = start_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--grace", "1", "--", "sleep", "60",
        preexec_fn=_ignore_sighup,
    )  # fmt: skip
    wait_for(lambda: (row := live_row(db_path, taskid)) and row.pid)
    runner.send_signal(signal.SIGHUP)
    assert live_row(db_path, taskid).status == "RUNNING"
    runner.send_signal(signal.SIGTERM)  # had SIGHUP been caught, it would be the one seen
    assert runner.wait(timeout=20) == 128 + signal.SIGTERM, runner.stderr.read()
    record = history(db_path, taskid)
    assert (record.outcome, record.termerror) == ("KILLED", "twrun received SIGTERM")


def test_a_starter_that_ignores_sigchld_still_gets_the_tasks_status(db_path: Path) -> None:
    """With SIGCHLD ignored, the system would reap the task before twrun could wait for it."""

    def ignore_sigchld() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)

    runner = start_cli(
        "twrun", "--db", db_path, "--", "sh", "-c", "exit 3", preexec_fn=ignore_sigchld
    )
    assert runner.wait(timeout=20) == 3, runner.stderr.read()
    assert history(db_path, 1).outcome == "FAILED"


def test_task_without_feedback_runs_without_its_feedback_folder(db_path: Path) -> None:
    (db_path.parent / "tasks-feedback").write_text("a file where the folder would go")
    result = run_cli("twrun", "--db", db_path, "--", "true")
    assert result.returncode == 0, result.stderr
    with open_store(db_path) as store:
        assert store.list_tasks() == []
        (record,) = store.history()
    assert record.outcome == "COMPLETED"


def _refuse_claim(self: SqliteStore, now: float, taskid: int, launch: Launch) -> None:
    raise StoreError("database is locked")


def test_a_failed_claim_leaves_nothing_of_the_task_twrun_made(
    db_path: Path, tmp_path: Path
) -> None:
    """twrun given no id makes its task in the write that claims it: a claim that fails
    takes the new row with it, and nothing runs."""
    marker = tmp_path / "ran"
    open_store(db_path).close()
    pid = os.fork()
    if pid == 0:  # the child plays twrun and never returns into pytest
        code = 0
        try:
            SqliteStore._claim = _refuse_claim  # type: ignore[method-assign]
            with open_store(db_path) as store:
                run_task(store, LaunchRequest(argv=["touch", str(marker)]))
        except StoreError:
            code = 125
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 125
    assert not marker.exists()
    with open_store(db_path) as store:
        assert store.list_tasks() == [] and store.history() == []
        assert store.reserve() == 1  # not even its id was taken


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
    assert (record.outcome, record.exitcode) == ("FAILED", 125)
    assert record.termerror.startswith(f"cannot remove the old feedback file {leftover}")


#: A task that writes its feedback where its last argument (`--feedback X`, `--feedback=X`) says.
WRITE_FEEDBACK_ARG = "import sys; open(sys.argv[-1].split('=')[-1], 'w').write('[k]v\\n')"


@pytest.mark.parametrize("joined", [False, True], ids=["--feedback X", "--feedback=X"])
def test_feedback_written_where_twrun_does_not_look_is_warned(
    db_path: Path, tmp_path: Path, joined: bool
) -> None:
    taskid = reserve(db_path)
    name = f"feedback_{taskid}.log"
    flag = [f"--feedback={name}"] if joined else ["--feedback", name]
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--timeout", "30",
        "--", PY, "-c", WRITE_FEEDBACK_ARG, *flag, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    watched = db_path.parent / "tasks-feedback" / name
    assert result.stderr.splitlines() == [
        f"twrun: warning: the command writes its feedback to {name}, but twrun watches "
        f"{watched}: have it write to $TASKWATCHER_FEEDBACK, "
        f"or make {os.path.realpath(tmp_path)} the feedback folder"
    ]


def test_feedpath_of_the_epilog_example_matches_the_command(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", ".", "--timeout", "30",
        "--", PY, "-c", WRITE_FEEDBACK_ARG, "--feedback", f"feedback_{taskid}.log",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert history(db_path, taskid).feedback == {"k": "v"}


def test_feedback_value_of_another_name_is_not_taken_for_a_path(tmp_path: Path) -> None:
    watched = tmp_path / "feedback_7.log"
    assert feedback_elsewhere(["run", "--feedback", "kill", "3"], watched) is None
    assert feedback_elsewhere(["run", "--feedback"], watched) is None
    assert feedback_elsewhere(["run", f"--feedback={watched}"], watched) is None


@pytest.mark.parametrize(
    ("mtime", "wall_now", "expected"),
    [
        (999.75, 1000.0, 49.75),  # a fresh write, seen a quarter second later
        (1000.0, 1000.0, 50.0),
        (4600.0, 1000.0, 50.0),  # an mtime in the future counts as now, not as an hour ahead
        (1000.0, 4600.0, 50.0 - HEARTBEAT_CHECK_INTERVAL),  # the wall clock stepped forward
    ],
)
def test_heartbeat_placed_on_the_monotonic_clock(
    mtime: float, wall_now: float, expected: float
) -> None:
    assert heartbeat_on_monotonic(mtime, wall_now, mono_now=50.0) == expected


def test_after_a_pause_a_write_is_judged_by_its_real_age() -> None:
    """Stopped 10 s (SIGSTOP) with a 3 s timeout: a write made 9 s ago is 9 s old, not 1."""
    task = TaskState(1, timeout=3.0)
    task.start(100.0)
    woke = 110.0  # the supervisor looked last at 100.0
    task.heartbeat(heartbeat_on_monotonic(1001.0, 1010.0, woke, since_last_look=10.0))
    task.tick(woke)
    assert task.state is Status.TIMEOUT
    task = TaskState(2, timeout=3.0)  # without the pause: alive
    task.start(109.0)
    task.heartbeat(heartbeat_on_monotonic(1009.5, 1010.0, 110.0, since_last_look=1.0))
    task.tick(110.0)
    assert task.state is Status.RUNNING


def test_feedback_dated_in_the_future_does_not_shield_a_silent_task(
    db_path: Path, tmp_path: Path
) -> None:
    taskid = reserve(db_path)
    code = (
        "import os, time; path = os.environ['TASKWATCHER_FEEDBACK']; open(path, 'w').write('[k]v');"
        " ahead = time.time() + 3600; os.utime(path, (ahead, ahead)); time.sleep(120)"
    )
    runner = start_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", tmp_path,
        "--timeout", "2", "--grace", "1", "--", PY, "-c", code, "--feedback",
    )  # fmt: skip
    try:
        assert runner.wait(timeout=60) == 124, runner.stderr.read()
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=20)
    assert history(db_path, taskid).outcome == "TIMEOUT"


def test_timeout_reason_has_one_source() -> None:
    stop = StopReason.timeout(2.5)
    end = end_of_task(1, stop, -signal.SIGTERM, "SIGTERM")
    assert (end.outcome, end.exit_code, end.termerror) == ("TIMEOUT", 124, stop.reason)
    assert stop.reason == "no heartbeat for 2.5 s"


def test_timeout_zero_means_none(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path)
    code = "import os; print(os.environ['TASKWATCHER_TIMEOUT'])"
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", taskid, "--feedpath", tmp_path, "--timeout", "0",
        "--", PY, "-c", code,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n"
    assert history(db_path, taskid).outcome == "COMPLETED"


def test_huge_taskid_is_a_usage_error(db_path: Path) -> None:
    result = run_cli("twrun", "--db", db_path, "--taskid", "99999999999999999999", "--", "true")
    assert result.returncode == 125
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("twrun: argument --taskid: not a task id")


def test_a_relative_database_path_hands_the_task_absolute_paths(tmp_path: Path) -> None:
    """A task that changes folder still finds its feedback file, and so does twctl elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reports = (
        f'cd {elsewhere}; for i in 1 2 3 4 5 6 7 8; do echo "[step]$i" >> "$TASKWATCHER_FEEDBACK";'
        " sleep 0.25; done"
    )
    taskid = run_cli("twctl", "--db", "t.db", "reserve", cwd=tmp_path).stdout.strip()
    result = run_cli(
        "twrun", "--db", "t.db", "--taskid", taskid, "--timeout", "1",
        "--", "sh", "-c", reports, "--feedback", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = run_cli("twctl", "--db", tmp_path / "t.db", "feedback", taskid, cwd=elsewhere)
    assert shown.stdout == '{"step":"8"}\n'
    assert history(tmp_path / "t.db", taskid).outcome == "COMPLETED"
