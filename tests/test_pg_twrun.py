"""Tasks of several hosts on one PostgreSQL database, the way users meet them: real twrun
supervisors, hosts told apart by $TASKWATCHER_HOST, twctl on "another host" reading,
killing and clearing them; and a supervisor that loses the database stops its task."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import psycopg
import psycopg.conninfo
import pytest
from rich.console import Console

from taskwatcher.cli.watch import render_frame
from taskwatcher.engine.store import Store, open_store
from tests.helpers import BIN, run_cli, wait_for
from tests.store_helpers import a_launch
from tests.tcp_proxy import Proxy

#: A task that reports a step in its feedback file, prints two lines, then waits.
REPORTING = (
    'printf "[step] two\\n" > "$TASKWATCHER_FEEDBACK"; echo first; echo second; exec sleep 60'
)


def on_host(host: str, **extra: str) -> dict[str, str]:
    """The environment of a command run on `host`."""
    return {**os.environ, "TASKWATCHER_HOST": host, **extra}


def twctl(url: str, host: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("twctl", "--db", url, *args, env=on_host(host, **extra))


@pytest.fixture
def supervisors() -> Iterator[list[subprocess.Popen[str]]]:
    """twrun processes of the test; any still running at the end is killed with its task."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for runner in started:
        if runner.poll() is None:
            for child in psutil.Process(runner.pid).children(recursive=True):
                child.kill()
            runner.kill()
        runner.communicate(timeout=10)


def start_task(
    supervisors: list, url: str, host: str, command: str, **extra: str
) -> subprocess.Popen[str]:
    runner = subprocess.Popen(
        [str(BIN / "twrun"), "--db", url, "--", "sh", "-c", command],
        env=on_host(host, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    supervisors.append(runner)
    return runner


def running_task(url: str) -> dict:
    """The one live task, once its supervisor has published its feedback and output."""

    def published() -> dict | None:
        with open_store(url) as store:
            tasks = store.list_tasks()
            if tasks and store.live_feedback() and tasks[0].output_tail:
                return {"task": tasks[0], "feedback": store.load_feedback(tasks[0].taskid)}
        return None

    return wait_for(published, timeout=20)


def test_another_host_lists_reads_and_kills_a_task(pg_url, supervisors):
    runner = start_task(supervisors, pg_url, "host-a", REPORTING)
    taskid = running_task(pg_url)["task"].taskid
    listed = orjson.loads(twctl(pg_url, "host-b", "list", "--json").stdout)
    assert [(task["taskid"], task["host"]) for task in listed] == [(taskid, "host-a")]
    feedback = twctl(pg_url, "host-b", "feedback", str(taskid))
    assert feedback.returncode == 0 and "two" in feedback.stdout
    shown = twctl(pg_url, "host-b", "show", str(taskid))
    assert "host-a" in shown.stdout and "two" in shown.stdout
    killed = twctl(pg_url, "host-b", "kill", str(taskid))
    assert killed.returncode == 0, killed.stderr
    assert "KILLED" in killed.stdout
    assert runner.wait(timeout=10) == 143
    with open_store(pg_url) as store:
        ended = store.history_of(taskid)
    assert ended.outcome == "KILLED" and "host-b" in ended.killed_by


def test_wait_works_from_another_host(pg_url, supervisors):
    start_task(supervisors, pg_url, "host-a", "sleep 0.5; exit 3")
    taskid = wait_for(lambda: open_store(pg_url).list_tasks())[0].taskid
    waited = twctl(pg_url, "host-b", "wait", str(taskid))
    assert waited.returncode == 3, waited.stderr


def test_the_log_of_another_host_is_its_pushed_tail(pg_url, supervisors):
    runner = start_task(supervisors, pg_url, "host-a", REPORTING)
    task = running_task(pg_url)["task"]
    assert task.logfile.startswith(os.environ["XDG_STATE_HOME"] + "/taskwatcher/logs/")
    assert task.feedpath.startswith(os.environ["XDG_STATE_HOME"] + "/taskwatcher/feedback/")
    log = twctl(pg_url, "host-b", "log", str(task.taskid), "-n", "1")
    assert log.returncode == 0 and log.stdout == "second\n"
    assert "ran on host host-a" in log.stderr and task.logfile in log.stderr
    as_json = orjson.loads(twctl(pg_url, "host-b", "log", str(task.taskid), "--json").stdout)
    assert as_json["lines"] == ["first", "second"]
    followed = twctl(pg_url, "host-b", "follow", str(task.taskid))
    assert followed.returncode == 1 and "follow it there" in followed.stderr
    here = twctl(pg_url, "host-a", "log", str(task.taskid))
    assert here.stdout == "first\nsecond\n" and here.stderr == ""  # its own host reads the file
    twctl(pg_url, "host-a", "kill", str(task.taskid))
    runner.wait(timeout=10)
    after = twctl(pg_url, "host-b", "log", str(task.taskid))
    assert after.returncode == 143 and after.stdout.startswith("first\nsecond\n")


def test_clear_removes_the_logs_of_this_host_only(pg_url, supervisors):
    """Each host clears its own logs; rows whose log is elsewhere wait for their host."""
    for host in ("host-a", "host-b"):
        runner = start_task(supervisors, pg_url, host, f"echo from {host}")
        assert runner.wait(timeout=20) == 0
    with open_store(pg_url) as store:
        logs = {ended.host: Path(ended.logfile) for ended in store.history()}
    assert all(path.exists() for path in logs.values())
    cleared = twctl(pg_url, "host-a", "clear")
    assert cleared.returncode == 0, cleared.stderr
    assert not logs["host-a"].exists()
    assert logs["host-b"].exists()  # host-b clears its own, and its row stays for it
    with open_store(pg_url) as store:
        assert [ended.host for ended in store.history()] == ["host-b"]
    assert twctl(pg_url, "host-b", "clear").returncode == 0
    assert not logs["host-b"].exists()
    with open_store(pg_url) as store:
        assert store.history() == []


def test_watch_shows_hosts_when_there_are_several(pg_url):
    with open_store(pg_url) as store:
        for host in ("host-a", "host-b"):
            taskid = store.reserve(f"on-{host}")
            store.claim(taskid, a_launch(host=host))
        drawn = _drawn(store)
        assert "host-a" in drawn and "host-b" in drawn
        store.reinitialize()
        taskid = store.reserve("alone")
        store.claim(taskid, a_launch(host="host-a"))
        drawn = _drawn(store)
        assert "alone" in drawn and "host-a" not in drawn


def _drawn(store: Store) -> str:
    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render_frame(store))
    return console.export_text()


def test_a_dead_supervisor_of_another_host_is_lost_after_its_lease(pg_url, supervisors):
    runner = start_task(supervisors, pg_url, "host-a", "exec sleep 60", TASKWATCHER_LEASE="2")
    taskid = wait_for(lambda: open_store(pg_url).list_tasks())[0].taskid
    task_process = wait_for(lambda: psutil.Process(runner.pid).children())[0]
    runner.kill()  # the supervisor dies, its task lives on (elsewhere, nobody could stop it)
    task_process.kill()
    runner.wait(timeout=10)

    def lost() -> bool:
        twctl(pg_url, "host-c", "update")
        with open_store(pg_url) as store:
            return store.history_of(taskid) is not None

    wait_for(lost, timeout=20)
    with open_store(pg_url) as store:
        ended = store.history_of(taskid)
    assert ended.outcome == "LOST" and "lease expired" in ended.termerror


def test_a_supervisor_cut_off_from_the_database_stops_its_task(pg_url, supervisors):
    """The network to the server is cut: the supervisor cannot renew its lease, so after
    the lease it stops its task itself, which another host's housekeeping calls LOST."""
    with Proxy.to(pg_url) as proxy:
        extra = {"TASKWATCHER_LEASE": "3"}  # the lock timeout stays 30 s: the lease decides
        runner = start_task(supervisors, proxy.url_for(pg_url), "host-a", "exec sleep 60", **extra)
        taskid = wait_for(lambda: open_store(pg_url).list_tasks())[0].taskid
        task_process = wait_for(lambda: psutil.Process(runner.pid).children())[0]
        proxy.cut()
        _, stderr = runner.communicate(timeout=30)
        assert runner.returncode == 125, stderr
        assert "ended LOST" in stderr
        assert not task_process.is_running()
        wait_for(lambda: twctl(pg_url, "host-c", "update", TASKWATCHER_LEASE="3") and
                 open_store(pg_url).history_of(taskid), timeout=20)  # fmt: skip
    with open_store(pg_url) as store:
        assert store.history_of(taskid).outcome == "LOST"


def test_a_long_stop_keeps_the_lease(pg_url, supervisors):
    """A task that takes longer than the lease to stop is still KILLED, not LOST: its
    supervisor renews the lease while it waits for the task."""
    slow = "trap 'sleep 5; exit 0' TERM; while :; do sleep 0.1; done"
    runner = subprocess.Popen(
        [str(BIN / "twrun"), "--db", pg_url, "--grace", "8", "--", "sh", "-c", slow],
        env=on_host("host-a", TASKWATCHER_LEASE="3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    supervisors.append(runner)
    taskid = wait_for(lambda: open_store(pg_url).list_tasks(status="RUNNING"))[0].taskid
    killed = twctl(pg_url, "host-b", "kill", str(taskid), TASKWATCHER_LEASE="3")
    assert killed.returncode == 0 and "KILLED" in killed.stdout, killed.stdout + killed.stderr
    runner.communicate(timeout=20)


def test_a_forged_notification_costs_the_supervisor_nothing(pg_url, supervisors):
    """Anyone connected may NOTIFY anything on a task's channel: it only makes the
    supervisor look at its row again."""
    runner = start_task(supervisors, pg_url, "host-a", "exec sleep 60")
    taskid = wait_for(lambda: open_store(pg_url).list_tasks(status="RUNNING"))[0].taskid
    with psycopg.connect(pg_url, autocommit=True) as connection:
        for payload in ("boom", "", "99999999999999999999999"):
            connection.execute(f"NOTIFY taskwatcher_kill_{taskid}, '{payload}'")
    killed = twctl(pg_url, "host-b", "kill", str(taskid))
    assert "KILLED" in killed.stdout, killed.stderr
    assert runner.wait(timeout=10) == 143
    assert "Traceback" not in runner.stderr.read()


def test_a_url_without_a_host_keeps_the_files_in_the_state_folder(pg_url, tmp_path):
    """`postgresql:///db?host=/socket/folder`, libpq's usual local form, is a server too."""
    parts = psycopg.conninfo.conninfo_to_dict(os.environ["TASKWATCHER_TEST_PG_SOCKET"])
    database = psycopg.conninfo.conninfo_to_dict(pg_url)["dbname"]
    url = f"postgresql:///{database}?host={parts['host']}&port={parts['port']}&user=postgres"
    work = tmp_path / "work"
    work.mkdir()
    task = 'echo hi; test -n "$TASKWATCHER_FEEDBACK"'
    ran = run_cli("twrun", "--db", url, "--", "sh", "-c", task, cwd=work)
    assert ran.returncode == 0, ran.stderr
    assert list(work.iterdir()) == []
    with open_store(url) as store:
        (ended,) = store.history()
    assert ended.logfile.startswith(os.environ["XDG_STATE_HOME"] + "/taskwatcher/logs/")


def test_leftovers_of_a_task_another_host_found_lost_are_stopped_on_its_host(pg_url, supervisors):
    """The supervisor dies, another host's housekeeping archives the task LOST after its
    lease: what is left of the task on its own host goes at that host's next housekeeping."""
    runner = start_task(supervisors, pg_url, "host-a", "sleep 4321 & wait", TASKWATCHER_LEASE="2")
    taskid = wait_for(lambda: open_store(pg_url).list_tasks(status="RUNNING"))[0].taskid
    left = wait_for(
        lambda: [p for p in psutil.Process(runner.pid).children(recursive=True)
                 if p.name() == "sleep"]
    )[0]  # fmt: skip
    runner.kill()
    runner.wait(timeout=10)
    wait_for(lambda: twctl(pg_url, "host-b", "update") and open_store(pg_url).history_of(taskid))
    assert left.is_running()  # host-b cannot reach it
    assert twctl(pg_url, "host-a", "update").returncode == 0
    left.wait(timeout=10)
    assert twctl(pg_url, "host-a", "update").returncode == 0  # once swept, left alone
