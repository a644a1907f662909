"""twctl through subprocesses on real databases, with real twrun tasks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from taskwatcher.engine import control
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.records import Ended, Ending
from taskwatcher.engine.store import open_store
from tests.fault_helpers import query
from tests.helpers import HISTORY_KEYS, LIST_KEYS, run_cli, start_cli, wait_for
from tests.store_helpers import claim

PY = sys.executable


def twctl(db: Path, *args: str | Path, code: int = 0) -> str:
    result = run_cli("twctl", "--db", db, *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    if code:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
    return result.stdout


def twctl_json(db: Path, *args: str) -> list[dict]:
    return json.loads(twctl(db, *args, "--json"))


def launch_sleeper(db: Path, name: str, seconds: int = 60):
    taskid = twctl(db, "reserve", "--name", name).strip()
    runner = start_cli(
        "twrun", "--db", db, "--taskid", taskid, "--grace", "1", "--", "sleep", str(seconds)
    )
    wait_for(
        lambda: any(
            t["taskid"] == int(taskid) and t["status"] == "RUNNING" and t["pid"]
            for t in twctl_json(db, "list")
        )
    )
    return int(taskid), runner


@pytest.fixture
def progress_task(db_path: Path, tmp_path: Path):
    """A running task that has reported progress 40 and waits for a go file to report more."""
    go = tmp_path / "go"
    task = tmp_path / "progress.py"
    task.write_text(
        textwrap.dedent(f"""
        import os, time, pathlib
        from taskwatcher.grammar import FeedbackWriter
        go = pathlib.Path({str(go)!r})
        with FeedbackWriter(os.environ["TASKWATCHER_FEEDBACK"]) as feedback:
            feedback.set("testcase_name", "warm up")
            feedback.set("progress", "40")
            while not go.exists():
                time.sleep(0.02)
            feedback.set("testcase_name", "cool down")
            feedback.set("progress", "100")
    """)
    )
    taskid = twctl(db_path, "reserve", "--name", "progress").strip()
    runner = start_cli(
        "twrun",
        "--db",
        db_path,
        "--taskid",
        taskid,
        "--timeout",
        "30",
        "--",
        PY,
        task,
        "--feedback",
    )
    wait_for(
        lambda: (
            twctl_json(db_path, "list") and twctl_json(db_path, "list")[0]["status"] == "RUNNING"
        )
    )
    wait_for(lambda: '"40"' in run_cli("twctl", "--db", db_path, "feedback", taskid).stdout)
    yield int(taskid), runner, go
    go.touch()
    runner.wait(timeout=20)


def test_reserve_prints_the_bare_id_and_db_goes_anywhere(db_path: Path) -> None:
    first = run_cli("twctl", "--db", db_path, "reserve")
    second = run_cli("twctl", "reserve", "--db", db_path)
    assert first.stdout == "1\n" and second.stdout == "2\n"


def test_db_from_environment(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKWATCHER_DB", str(db_path))
    assert run_cli("twctl", "reserve").stdout == "1\n"
    assert db_path.exists()


def test_unique_conflict_names_the_holder(db_path: Path) -> None:
    twctl(db_path, "reserve", "--name", "solo", "--unique")
    result = run_cli("twctl", "--db", db_path, "reserve", "--name", "solo", "--unique")
    assert result.returncode == 1
    assert "held by live task 1" in result.stderr


def test_list_empty_piped_and_json(db_path: Path) -> None:
    open_store(db_path).close()  # an empty database: a missing one named by --db is an error
    assert twctl(db_path, "list") == "No tasks.\n"
    assert twctl_json(db_path, "list") == []
    twctl(db_path, "reserve", "--name", "a b", "--info1", "first")
    lines = twctl(db_path, "list").splitlines()
    assert lines[0].split() == [
        "taskid", "name", "info1", "info2", "info3", "pid", "status", "attempt", "starttime",
        "duration", "feedback", "timer", "timeout", "said",
    ]  # fmt: skip
    assert "a b" in lines[1] and "RESERVED" in lines[1] and "first" in lines[1]
    (record,) = twctl_json(db_path, "list")
    assert list(record)[: len(LIST_KEYS)] == LIST_KEYS


def test_list_filters(db_path: Path) -> None:
    twctl(db_path, "reserve", "--name", "one")
    twctl(db_path, "reserve", "--name", "two")
    assert [t["name"] for t in twctl_json(db_path, "list", "--name", "two")] == ["two"]
    assert len(twctl_json(db_path, "list", "--status", "reserved")) == 2
    assert twctl_json(db_path, "list", "--status", "RUNNING") == []


def test_list_escapes_control_characters(db_path: Path) -> None:
    twctl(db_path, "reserve", "--name", "evil\x1b[31mred\nline")
    output = twctl(db_path, "list")
    assert "\x1b" not in output
    assert "evil\\x1b[31mred\\nline" in output


def test_aliases(db_path: Path) -> None:
    assert twctl(db_path, "--reserve", "--name", "x") == "1\n"
    assert "RESERVED" in twctl(db_path, "--list")
    assert run_cli("twctl", "--list", "--db", db_path).returncode == 0
    twctl(db_path, "--feedback", "1", code=1)
    assert "EXPIRED" in twctl(db_path, "--kill", "1")
    assert "EXPIRED" in twctl(db_path, "--history")
    twctl(db_path, "--reserve", "--name", "y")
    twctl(db_path, "--killall", "y")
    assert "2 history row(s) removed" in twctl(db_path, "--clear")
    assert "0 task(s) archived" in twctl(db_path, "--update")
    assert "initialized" in twctl(db_path, "--initialize")


@pytest.mark.parametrize(
    "command",
    ["init", "update", "list", "reserve", "feedback", "history", "clear", "kill", "killall",
     "show", "watch"],
)  # fmt: skip
def test_help_has_an_example(command: str) -> None:
    result = run_cli("twctl", command, "--help")
    assert result.returncode == 0
    assert "example:" in result.stdout and "twctl" in result.stdout


def test_usage_errors_exit_2(db_path: Path) -> None:
    assert run_cli("twctl", "--db", db_path, "frobnicate").returncode == 2
    assert run_cli("twctl", "--db", db_path, "kill", "abc").returncode == 2


def test_unknown_task_exits_1(db_path: Path) -> None:
    open_store(db_path).close()
    twctl(db_path, "feedback", "42", code=1)
    twctl(db_path, "kill", "42", code=1)
    twctl(db_path, "show", "42", code=1)


def test_bad_database_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite at all, just text\n" * 10)
    before = bogus.read_bytes()
    result = run_cli("twctl", "--db", bogus, "list")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert bogus.read_bytes() == before


def test_feedback_while_running_and_after(db_path: Path, progress_task) -> None:
    taskid, runner, go = progress_task
    live = json.loads(twctl(db_path, "feedback", str(taskid)))
    assert live == {"testcase_name": "warm up", "progress": "40"}
    with open_store(db_path) as store:
        assert store.load_feedback(taskid) == live  # published by the supervisor
    go.touch()
    assert runner.wait(timeout=20) == 0
    final = json.loads(twctl(db_path, "feedback", str(taskid)))
    assert final == {"testcase_name": "cool down", "progress": "100"}


def test_watch_once_shows_progress(db_path: Path, progress_task) -> None:
    wide = {**os.environ, "COLUMNS": "160"}
    output = run_cli("twctl", "--db", db_path, "watch", "--once", env=wide).stdout
    assert "progress" in output and "warm up" in output and "40.0%" in output
    assert "RUNNING" in output


def test_show_live_and_finished(db_path: Path, progress_task) -> None:
    taskid, runner, go = progress_task
    live = json.loads(twctl(db_path, "show", str(taskid), "--json"))
    assert live["state"] == "live" and live["feedback_values"]["progress"] == "40"
    assert "warm up" in twctl(db_path, "show", str(taskid))
    go.touch()
    runner.wait(timeout=20)
    finished = json.loads(twctl(db_path, "show", str(taskid), "--json"))
    assert finished["state"] == "finished" and finished["outcome"] == "COMPLETED"


def test_history_filters_and_json(db_path: Path) -> None:
    for name, command in (("ok", "true"), ("bad", "false"), ("ok", "true")):
        run_cli("twrun", "--db", db_path, "--name", name, "--", command)
    records = twctl_json(db_path, "history")
    assert [r["taskid"] for r in records] == [3, 2, 1]
    assert list(records[0])[: len(HISTORY_KEYS)] == HISTORY_KEYS
    assert {r["outcome"] for r in twctl_json(db_path, "history", "--name", "ok")} == {"COMPLETED"}
    assert [r["taskname"] for r in twctl_json(db_path, "history", "--outcome", "failed")] == ["bad"]
    assert len(twctl_json(db_path, "history", "--limit", "1")) == 1
    assert twctl_json(db_path, "history", "--since", "2099-01-01") == []
    assert len(twctl_json(db_path, "history", "--since", "1h")) == 3
    plain = twctl(db_path, "history").splitlines()
    assert plain[0].split()[:6] == ["taskid", "name", "info1", "info2", "info3", "outcome"]


def test_clear_before_keeps_recent_rows(db_path: Path) -> None:
    run_cli("twrun", "--db", db_path, "--", "true")
    assert "0 history row(s) removed" in twctl(db_path, "clear", "--before", "2000-01-01")
    assert "1 history row(s) removed" in twctl(db_path, "clear")
    assert twctl(db_path, "history") == "No history.\n"


def test_kill_one_and_killall_leave_others(db_path: Path) -> None:
    victim, victim_runner = launch_sleeper(db_path, "victim")
    herd = [launch_sleeper(db_path, "herd") for _ in range(2)]
    other, other_runner = launch_sleeper(db_path, "bystander")
    assert f"task {victim} (victim): KILLED" in twctl(db_path, "kill", str(victim))
    assert victim_runner.wait(timeout=20) == 128 + signal.SIGTERM
    output = twctl(db_path, "killall", "herd")
    assert output.count("KILLED") == 2
    for _, runner in herd:
        runner.wait(timeout=20)
    (left,) = twctl_json(db_path, "list")
    assert left["taskid"] == other and left["status"] == "RUNNING"
    record = twctl_json(db_path, "history", "--name", "victim")[0]
    assert record["outcome"] == "KILLED" and "@" in record["killed_by"]
    twctl(db_path, "killall", "nobody", code=1)
    twctl(db_path, "kill", str(other))
    other_runner.wait(timeout=20)


def test_kill_cancels_a_reservation(db_path: Path) -> None:
    taskid = twctl(db_path, "reserve").strip()
    assert "EXPIRED" in twctl(db_path, "kill", taskid)
    (record,) = twctl_json(db_path, "history")
    assert record["outcome"] == "EXPIRED"


def test_lost_after_supervisor_sigkill(db_path: Path) -> None:
    taskid, runner = launch_sleeper(db_path, "orphan")
    child = twctl_json(db_path, "list")[0]["pid"]
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    assert twctl_json(db_path, "list") == []
    (record,) = twctl_json(db_path, "history")
    assert record["outcome"] == "LOST" and record["taskid"] == taskid
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie")


def test_update_reports_lost_tasks(db_path: Path) -> None:
    taskid, runner = launch_sleeper(db_path, "orphan")
    runner.send_signal(signal.SIGKILL)
    runner.wait(timeout=10)
    output = twctl(db_path, "update")
    assert f"task {taskid} (orphan): LOST" in output


def test_init_refuses_with_live_tasks(db_path: Path) -> None:
    twctl(db_path, "reserve")
    twctl(db_path, "init", code=1)
    refused = run_cli("twctl", "--db", db_path, "init")
    assert refused.stderr.strip().endswith("; use --force to drop them"), refused.stderr
    assert twctl_json(db_path, "list")
    twctl(db_path, "init", "--force")
    assert twctl_json(db_path, "list") == []


def test_reservation_ttl_from_environment(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKWATCHER_RESERVATION_TTL", "0.2")
    stale = twctl(db_path, "reserve").strip()
    wait_for(lambda: twctl_json(db_path, "history"), timeout=10, interval=0.1)
    (record,) = twctl_json(db_path, "history")
    assert record["taskid"] == int(stale) and record["outcome"] == "EXPIRED"
    monkeypatch.setenv("TASKWATCHER_RESERVATION_TTL", "soon")
    twctl(db_path, "list", code=2)


@pytest.fixture
def bystander(request: pytest.FixtureRequest) -> psutil.Process:
    """A process in its own group that no edited row may get signalled."""
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    request.addfinalizer(lambda: (child.kill(), child.wait()))
    return psutil.Process(child.pid)


@pytest.mark.parametrize(
    ("supervisor_pid", "supervisor_ctime", "pid", "child_ctime"),
    [
        (-1, 1.0, 0, 1.0),
        (0, 1.0, -1, 1.0),
        (1, None, 1, None),
        (None, None, "x", "y"),
        (2**40, 1.0, 2**40, float("nan")),
    ],
)
def test_unusable_identities_are_lost_without_a_signal(
    db_path: Path,
    bystander: psutil.Process,
    supervisor_pid: object,
    supervisor_ctime: object,
    pid: object,
    child_ctime: object,
) -> None:
    taskid = int(twctl(db_path, "reserve", "--name", "edited"))
    query(
        db_path,
        "UPDATE tasks SET status = 'RUNNING', starttime = reservetime, host = ?,"
        " supervisor_pid = ?, supervisor_ctime = ?, pid = ?, child_ctime = ?, pgid = ?"
        " WHERE id = ?",
        (socket.gethostname(), supervisor_pid, supervisor_ctime, pid, child_ctime,
         bystander.pid, taskid),
    )  # fmt: skip
    assert twctl(db_path, "list") == "No tasks.\n"
    (record,) = twctl_json(db_path, "history")
    assert (record["taskid"], record["outcome"], record["termsignal"]) == (taskid, "LOST", None)
    assert bystander.status() != psutil.STATUS_ZOMBIE


def test_kill_refuses_a_task_of_another_host(db_path: Path, bystander: psutil.Process) -> None:
    taskid = int(twctl(db_path, "reserve", "--name", "remote"))
    query(
        db_path,
        "UPDATE tasks SET status = 'RUNNING', starttime = reservetime, host = 'elsewhere',"
        " supervisor_pid = ?, supervisor_ctime = ? WHERE id = ?",
        (bystander.pid, bystander.create_time(), taskid),
    )
    result = run_cli("twctl", "--db", db_path, "kill", taskid, "--wait", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "'elsewhere'" in result.stderr and len(result.stderr.splitlines()) == 1
    assert bystander.status() != psutil.STATUS_ZOMBIE
    (row,) = query(db_path, "SELECT kill_request FROM tasks WHERE id = ?", (taskid,))
    assert row == (None,)


def test_kill_tasks_reports_a_task_that_ended_before_its_turn(db_path: Path) -> None:
    with open_store(db_path) as store:
        first, second = store.reserve("herd"), store.reserve("herd")
        store.cancel_reservation(first, "someone else")
        records = control.kill_tasks(store, [first, second], "tester", wait=5)
    assert [(r.taskid, r.outcome) for r in records] == [
        (first, "EXPIRED"),
        (second, "EXPIRED"),
    ]
    assert "someone else" in records[0].termerror


def test_kill_tasks_stops_a_reservation_claimed_while_cancelling(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(db_path) as store:
        taskid = store.reserve("racing")
        cancel = store.cancel_reservation

        def claimed_first(taskid: int, who: str) -> Ended:
            # twrun claims the reservation between our read and our cancel; its supervisor
            # is already gone, so the kill ends the task at once.
            host = socket.gethostname()
            claim(store, taskid, supervisor_pid=2**22, supervisor_ctime=1.0, host=host)
            return cancel(taskid, who)

        monkeypatch.setattr(store, "cancel_reservation", claimed_first)
        (record,) = control.kill_tasks(store, [taskid], "tester", wait=5)
    assert (record.taskid, record.outcome, record.killed_by) == (taskid, "LOST", "tester")


def test_feedback_of_a_task_archived_while_reading(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(db_path) as store:
        taskid = store.reserve("ending")
        token_hash = claim(store, taskid, host="elsewhere")
        store.heartbeat(taskid, token_hash, store.now(), feedback={"progress": "6"})
        load = store.load_feedback

        def archived_first(taskid: int) -> dict[str, str]:
            ending = Ending(Status.COMPLETED, exitcode=0, feedback={"progress": "7"})
            store.archive(taskid, ending, token_hash=token_hash)
            return load(taskid)

        monkeypatch.setattr(store, "load_feedback", archived_first)
        assert control.current_feedback(store, taskid) == {"progress": "7"}
