"""`twrun --retries`: a failed task launched again under its id, each attempt in history,
RETRYING between two, the series ended by a kill, waited for whole, its hooks run once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.output import LogFile
from taskwatcher.engine.records import Ending
from taskwatcher.engine.retries import MAX_RETRY_DELAY, RetryPolicy
from taskwatcher.engine.store import open_store
from tests.fault_helpers import gone, reserve, twctl, twctl_json
from tests.helpers import BIN, run_cli, start_cli, wait_for
from tests.store_helpers import TOKEN_HASH, claim
from tests.test_metrics import labels, scrape

#: A task that fails until its third attempt, counting its attempts in a file of its own
#: (not trusting TASKWATCHER_ATTEMPT), and says in its feedback and output which one it is.
THIRD_TIME_LUCKY = """
n=$(( $(cat "$0" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$0"
printf '[step]%s\\n' "$n" > "$TASKWATCHER_FEEDBACK"
echo "run $n: attempt $TASKWATCHER_ATTEMPT of $TASKWATCHER_ATTEMPTS, $TASKWATCHER_FEEDBACK"
[ "$n" -ge 3 ] || exit 7
"""


def twrun(db: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli("twrun", "--db", db, "--output", "log", *argv, timeout=timeout)


def attempts_of(db: Path, taskid: int) -> list[dict]:
    """The task's history rows, first attempt first."""
    rows = [row for row in twctl_json(db, "history") if row["taskid"] == taskid]
    return sorted(rows, key=lambda row: row["attempt"])


def live(db: Path, taskid: int) -> dict | None:
    return next((task for task in twctl_json(db, "list") if task["taskid"] == taskid), None)


def test_a_task_that_succeeds_at_its_third_attempt(db_path: Path, tmp_path: Path, reporter):
    counter = tmp_path / "runs"
    result = twrun(
        db_path, "--retries", "3", "--retry-delay", "0.1", "--on-exit", reporter(),
        "--", "sh", "-c", THIRD_TIME_LUCKY, str(counter),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert counter.read_text() == "3\n"
    (taskid,) = {row["taskid"] for row in twctl_json(db_path, "history")}
    rows = attempts_of(db_path, taskid)
    assert [(row["attempt"], row["outcome"], row["exitcode"]) for row in rows] == [
        (1, "FAILED", 7), (2, "FAILED", 7), (3, "COMPLETED", 0),
    ]  # fmt: skip
    assert [row["feedback"] for row in rows] == [{"step": "1"}, {"step": "2"}, {"step": "3"}]
    assert rows[0]["starttime"] < rows[0]["endtime"] <= rows[1]["starttime"] < rows[2]["starttime"]
    assert live(db_path, taskid) is None
    assert twctl_json(db_path, "history", "--taskid", str(taskid)) == rows[::-1]
    assert twctl_json(db_path, "history", "--taskid", str(taskid + 1)) == []
    assert json.loads(twctl(db_path, "show", str(taskid), "--json"))["attempt"] == 3
    # One log, each attempt after the one before it, saying which it is; one feedback path.
    log = Path(rows[2]["logfile"]).read_text().splitlines()
    runs = [line for line in log if line.startswith("run ")]
    assert [line.split(",")[0] for line in runs] == [
        f"run {n}: attempt {n} of 4" for n in (1, 2, 3)
    ]
    assert len({line.split(", ")[1] for line in runs}) == 1  # the same feedback file each time
    assert log.index("[twrun] attempt 2 of 4") < log.index("[twrun] attempt 3 of 4")
    assert result.stderr.count("the next in 0.1 s") == 2
    told = reporter.told()
    assert told is not None, result.stderr
    assert (told["TASKWATCHER_OUTCOME"], told["TASKWATCHER_ATTEMPT"]) == ("COMPLETED", "3")
    assert told["feedback"] == {"step": "3"}


def test_retries_that_run_out_exit_with_the_last_attempts_status(
    db_path: Path, tmp_path: Path, reporter
):
    result = twrun(
        db_path, "--retries", "2", "--retry-delay", "0", "--on-failure", reporter(),
        "--", "sh", "-c", 'echo "try $TASKWATCHER_ATTEMPT"; exit $((2 + TASKWATCHER_ATTEMPT))',
    )  # fmt: skip
    assert result.returncode == 5, result.stderr
    (taskid,) = {row["taskid"] for row in twctl_json(db_path, "history")}
    rows = attempts_of(db_path, taskid)
    assert [(row["outcome"], row["exitcode"]) for row in rows] == [
        ("FAILED", 3), ("FAILED", 4), ("FAILED", 5),
    ]  # fmt: skip
    told = reporter.told()
    assert (told["TASKWATCHER_ATTEMPT"], told["TASKWATCHER_EXITCODE"]) == ("3", "5")
    waited = run_cli("twctl", "--db", db_path, "wait", taskid)
    assert (waited.returncode, waited.stdout.split()) == (5, [str(taskid), "FAILED", "5"])


@pytest.mark.parametrize(
    ("retry_on", "ends"),
    [([], ["TIMEOUT", "TIMEOUT"]), (["--retry-on", "failed"], ["TIMEOUT"])],
    ids=["default", "failed-only"],
)
def test_a_timeout_is_retried_unless_retry_on_leaves_it_out(db_path: Path, retry_on, ends):
    result = twrun(
        db_path, "--timeout", "0.5", "--retries", "1", "--retry-delay", "0", *retry_on,
        "--", "sleep", "30",
    )  # fmt: skip
    assert result.returncode == 124, result.stderr
    (taskid,) = {row["taskid"] for row in twctl_json(db_path, "history")}
    assert [row["outcome"] for row in attempts_of(db_path, taskid)] == ends


@pytest.mark.parametrize(("retry_on", "attempts"), [([], 1), (["--retry-on", "failed,killed"], 2)])
def test_a_signal_from_elsewhere_is_retried_only_when_asked(db_path: Path, retry_on, attempts):
    """A task the kernel or a stranger killed (here: itself) is KILLED, which by default
    ends the series: a kill is seldom what a retry cures."""
    result = twrun(
        db_path, "--retries", "1", "--retry-delay", "0", *retry_on,
        "--", "sh", "-c", "kill -KILL $$",
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    (taskid,) = {row["taskid"] for row in twctl_json(db_path, "history")}
    assert [row["outcome"] for row in attempts_of(db_path, taskid)] == ["KILLED"] * attempts


def test_a_kill_during_an_attempt_ends_the_series(db_path: Path):
    taskid = reserve(db_path, "--name", "flaky")
    process = start_cli(
        "twrun", "--db", db_path, "--taskid", str(taskid), "--output", "log",
        "--retries", "5", "--retry-delay", "0", "--", "sleep", "30",
    )  # fmt: skip
    wait_for(lambda: (task := live(db_path, taskid)) and task["pid"])
    twctl(db_path, "kill", str(taskid))
    process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert [row["outcome"] for row in attempts_of(db_path, taskid)] == ["KILLED"]


def test_between_attempts_the_task_is_live_and_a_kill_ends_it_at_once(db_path: Path):
    taskid = reserve(db_path, "--name", "nightly", "--unique")
    script = (
        'echo "said $TASKWATCHER_ATTEMPT"; printf "[step]one\\n" > "$TASKWATCHER_FEEDBACK"; false'
    )
    process = start_cli(
        "twrun", "--db", db_path, "--taskid", str(taskid), "--output", "log",
        "--retries", "3", "--retry-delay", "60", "--", "sh", "-c", script,
    )  # fmt: skip
    task = wait_for(
        lambda: (task := live(db_path, taskid)) and task["status"] == "RETRYING" and task
    )
    assert (task["attempt"], task["attempts"], task["pid"], task["duration"]) == (2, 4, None, None)
    assert task["retry_at"] > time.time() + 30
    (line,) = [line for line in twctl(db_path, "list").splitlines() if line.startswith(str(taskid))]
    assert line.split()[6:8] == ["RETRYING", "2/4"]
    # Still the task's: its unique name held, no end to wait for, no feedback of its own.
    refused = run_cli("twctl", "--db", db_path, "reserve", "--name", "nightly", "--unique")
    assert refused.returncode == 1, refused.stderr
    waited = run_cli("twctl", "--db", db_path, "wait", str(taskid), "--timeout", "0.2")
    assert waited.returncode == 1
    shown = run_cli("twctl", "--db", db_path, "log", str(taskid))
    assert (shown.returncode, shown.stdout) == (0, "said 1\n")  # the first attempt's, live
    assert json.loads(twctl(db_path, "feedback", str(taskid))) == {"step": "one"}
    samples = scrape(twctl(db_path, "metrics"))
    assert samples[("taskwatcher_live_tasks", labels(name="nightly", status="RETRYING"))] == 1
    task_labels = labels(taskid=str(taskid), name="nightly", host=os.uname().nodename)
    assert samples[("taskwatcher_task_attempt", task_labels)] == 2
    assert samples[("taskwatcher_ended_tasks", labels(name="nightly", outcome="FAILED"))] == 1
    started = time.monotonic()
    killed = twctl(db_path, "kill", str(taskid))
    assert time.monotonic() - started < 20  # not the 60 s of the delay
    assert "KILLED" in killed
    process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    first, second = attempts_of(db_path, taskid)
    assert (first["outcome"], first["exitcode"]) == ("FAILED", 1)
    assert (second["attempt"], second["outcome"], second["starttime"]) == (2, "KILLED", None)
    assert "before attempt 2 started" in second["termerror"]
    # What it last reported stays its record's: the first attempt's feedback and output.
    assert second["feedback"] == {"step": "one"} and second["output_tail"] == "said 1"
    assert json.loads(twctl(db_path, "feedback", str(taskid))) == {"step": "one"}
    shown = run_cli("twctl", "--db", db_path, "log", str(taskid))
    assert (shown.returncode, shown.stdout) == (128 + signal.SIGTERM, "said 1\n")


def test_a_signal_while_an_attempt_is_stopped_ends_the_task_even_without_a_delay(
    db_path: Path,
):
    """The attempt ended on its own, but twrun was told to stop while it stopped what the
    task left behind (a process ignoring SIGTERM, for the grace): no next attempt."""
    open_store(db_path).close()
    script = '(trap "" TERM; sleep 30) & echo "ran $TASKWATCHER_ATTEMPT"; exit 1'
    process = start_cli(
        "twrun", "--db", db_path, "--output", "log", "--grace", "2", "--retries", "1",
        "--retry-delay", "0", "--", "sh", "-c", script,
    )  # fmt: skip
    (task,) = wait_for(lambda: [task for task in twctl_json(db_path, "list") if task["pid"]])
    wait_for(lambda: gone(task["pid"]))
    process.send_signal(signal.SIGTERM)  # while the leftover gets its grace
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM, err
    first, second = attempts_of(db_path, task["taskid"])
    assert (first["outcome"], second["outcome"], second["starttime"]) == ("FAILED", "KILLED", None)
    assert "ran 2" not in Path(first["logfile"]).read_text()


def test_a_supervisor_killed_between_attempts_leaves_its_task_lost(db_path: Path):
    """SIGKILL cannot be heard: housekeeping finds the RETRYING task's supervisor gone."""
    taskid = reserve(db_path)
    script = 'echo "last words"; printf "[step]one\\n" > "$TASKWATCHER_FEEDBACK"; exit 1'
    process = start_cli(
        "twrun", "--db", db_path, "--taskid", str(taskid), "--output", "log",
        "--retries", "1", "--retry-delay", "60", "--", "sh", "-c", script,
    )  # fmt: skip
    wait_for(lambda: (task := live(db_path, taskid)) and task["status"] == "RETRYING")
    process.kill()
    process.communicate(timeout=30)
    twctl(db_path, "update")
    first, second = attempts_of(db_path, taskid)
    assert (first["outcome"], second["attempt"], second["outcome"]) == ("FAILED", 2, "LOST")
    assert live(db_path, taskid) is None
    # What the task last reported is its record's, as after a kill between attempts.
    assert (second["feedback"], second["output_tail"]) == ({"step": "one"}, "last words")


def test_a_database_recreated_between_attempts_ends_the_wait(db_path: Path):
    open_store(db_path).close()
    process = start_cli(
        "twrun", "--db", db_path, "--output", "log", "--retries", "1", "--retry-delay", "60",
        "--", "false",
    )  # fmt: skip
    wait_for(lambda: any(task["status"] == "RETRYING" for task in twctl_json(db_path, "list")))
    started = time.monotonic()
    twctl(db_path, "init", "--force")
    process.communicate(timeout=30)
    assert process.returncode == 125
    assert time.monotonic() - started < 20  # not the 60 s of the delay
    assert twctl_json(db_path, "list") == []


def test_a_stop_signal_to_twrun_between_attempts_ends_the_task(db_path: Path):
    open_store(db_path).close()  # for twctl to read before twrun is there
    process = start_cli(
        "twrun", "--db", db_path, "--output", "log", "--retries", "1", "--retry-delay", "60",
        "--", "false",
    )  # fmt: skip
    wait_for(lambda: any(task["status"] == "RETRYING" for task in twctl_json(db_path, "list")))
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGINT
    (ended,) = [row for row in twctl_json(db_path, "history") if row["attempt"] == 2]
    assert ended["outcome"] == "KILLED" and "twrun received SIGINT" in ended["termerror"]


def test_wait_waits_for_the_whole_series(db_path: Path, tmp_path: Path):
    taskid = reserve(db_path)
    gate = tmp_path / "gate"
    script = f'[ "$TASKWATCHER_ATTEMPT" = 2 ] || exit 1; while [ ! -e {gate} ]; do sleep 0.05; done'
    process = start_cli(
        "twrun", "--db", db_path, "--taskid", str(taskid), "--output", "log",
        "--retries", "1", "--retry-delay", "0", "--", "sh", "-c", script,
    )  # fmt: skip
    waiter = start_cli("twctl", "--db", db_path, "wait", str(taskid), "--json")
    wait_for(lambda: (task := live(db_path, taskid)) and task["attempt"] == 2 and task["pid"])
    assert waiter.poll() is None  # the first attempt's end is not the task's
    gate.touch()
    out, err = waiter.communicate(timeout=30)
    process.communicate(timeout=30)
    assert waiter.returncode == 0, err
    (ended,) = json.loads(out)
    assert (ended["outcome"], ended["attempt"], ended["exit_code"]) == ("COMPLETED", 2, 0)
    assert json.loads(twctl(db_path, "show", str(taskid), "--json"))["attempt"] == 2


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--retries", "-1"], "--retries: not a whole number of 0 or more: '-1'"),
        (["--retry-backoff", "0.5"], "--retry-backoff: not a factor from 1 to 100: '0.5'"),
        (
            ["--retry-on", "completed"],
            "--retry-on: 'completed': choose from failed, timeout, killed",
        ),
        (["--retry-delay", "100000"], "the retry delay must be 0 to 86400 s"),
    ],
)
def test_bad_retry_options_are_one_line_and_launch_nothing(db_path: Path, option, message):
    result = twrun(db_path, *option, "--", "true")
    assert result.returncode == 125
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]  # after the usage, for a usage error
    assert last.startswith("twrun: ") and message in last
    assert not db_path.exists()


def test_a_log_is_carried_on_only_into_the_file_the_attempt_before_wrote(tmp_path: Path):
    path = tmp_path / "task_1.log"
    first = LogFile(path)
    first.create()
    first.write(b"one\n")
    first.close()
    again = LogFile(path)
    again.carry_on(first.identity)
    again.write(b"two\n")
    again.close()
    assert path.read_bytes() == b"one\ntwo\n" and again.identity[:2] == first.identity[:2]
    planted = tmp_path / "precious"
    for swap in ("hard link", "symbolic link", "other file", "gone"):
        planted.write_bytes(b"keep\n")
        path.unlink()
        if swap == "hard link":
            os.link(planted, path)
        elif swap == "symbolic link":
            path.symlink_to(planted)
        elif swap == "other file":
            path.write_bytes(b"another\n")
        carried = LogFile(path)
        carried.carry_on(first.identity)
        carried.write(b"three\n")
        carried.close()
        assert planted.read_bytes() == b"keep\n", swap
        assert path.read_bytes() == b"three\n" and not path.is_symlink(), swap
        assert os.stat(path).st_nlink == 1, swap


def test_the_delays_grow_by_the_backoff_and_are_capped():
    policy = RetryPolicy(retries=10, delay=1.5, backoff=2)
    assert [policy.delay_before(attempt) for attempt in range(2, 6)] == [1.5, 3, 6, 12]
    assert RetryPolicy(retries=10**6, delay=1, backoff=100).delay_before(10**6) == MAX_RETRY_DELAY
    assert RetryPolicy(retries=2).delay_before(3) == 1.0  # no backoff: the same delay


def test_which_ends_the_policy_retries():
    policy = RetryPolicy(retries=1)
    assert policy.retries_end(Status.FAILED, None, attempt=1)
    assert policy.retries_end(Status.TIMEOUT, Status.TIMEOUT, attempt=1)  # its heartbeat rule
    assert not policy.retries_end(Status.FAILED, None, attempt=2)  # the last one
    assert not policy.retries_end(Status.KILLED, Status.KILLED, attempt=1)  # asked for
    assert not policy.retries_end(Status.COMPLETED, None, attempt=1)
    with_kills = RetryPolicy(retries=1, on=frozenset({Status.KILLED}))
    assert with_kills.retries_end(Status.KILLED, None, attempt=1)  # a signal from elsewhere
    assert not with_kills.retries_end(Status.KILLED, Status.KILLED, attempt=1)  # twctl kill


# -- the store: both backends ------------------------------------------------------------


def test_attempts_in_the_store(backend_location):
    """Each attempt is a history row of the same id; the task is live (and not in history's
    eyes ended) between two; the last attempt is the record its id reads."""
    with open_store(backend_location) as store:
        taskid = store.reserve("job")
        token = claim(store, taskid, attempts=3, timeout=5.0)
        failed = Ending(Status.FAILED, exitcode=2, feedback={"step": "1"})
        first = store.retry(taskid, token, failed, store.now() + 10)
        assert (first.attempt, first.outcome, first.feedback) == (1, "FAILED", {"step": "1"})
        between = store.get_task(taskid)
        assert (between.status, between.attempt, between.attempts) == ("RETRYING", 2, 3)
        assert (between.pid, between.starttime, between.started) == (None, None, False)
        assert store.history_of(taskid) is None  # not ended: another attempt comes
        store.note(taskid, token, {"timeout": 60.0})
        assert store.relaunch(taskid, token, 5.0) is None
        running = store.get_task(taskid)
        assert (running.status, running.attempt, running.timeout) == ("RUNNING", 2, 5.0)
        assert running.retry_at is None and running.starttime is not None
        store.retry(taskid, token, failed, store.now())
        store.request_kill(taskid, "someone")
        assert store.relaunch(taskid, token, 5.0) == "someone"  # and it stays RETRYING
        assert store.get_task(taskid).status == "RETRYING"
        store.archive(taskid, Ending(Status.KILLED, termerror="killed"), token_hash=token)
        assert [row.attempt for row in store.history()] == [3, 2, 1]
        assert (store.history_of(taskid).attempt, store.history_of(taskid).outcome) == (3, "KILLED")


def test_the_store_retries_no_further_than_the_attempts_claimed(backend_location):
    from taskwatcher.engine.errors import TransitionNotAllowed

    with open_store(backend_location) as store:
        taskid = store.reserve("job")
        token = claim(store, taskid, attempts=2)
        store.retry(taskid, token, Ending(Status.FAILED, exitcode=1), store.now())
        store.relaunch(taskid, token, None)
        with pytest.raises(TransitionNotAllowed, match="attempt 2 was its last of 2"):
            store.retry(taskid, token, Ending(Status.FAILED, exitcode=1), store.now())
        with pytest.raises(TransitionNotAllowed):  # a grade is no way out of RETRYING either
            store.retry(taskid, token, Ending(Status.COMPLETED), store.now())
        assert store.get_task(taskid).status == "RUNNING"
        assert len(store.history()) == 1


def test_clear_keeps_a_log_that_a_later_attempt_still_names(db_path: Path, tmp_path: Path):
    logfile = tmp_path / "task.log"
    logfile.write_text("both attempts\n")
    removed: list[tuple[int, str]] = []
    with open_store(db_path) as store:
        taskid = store.reserve("job")
        token = claim(store, taskid, attempts=2, logfile=str(logfile))
        store.retry(taskid, token, Ending(Status.FAILED, exitcode=1), store.now())
        assert store.clear_history(logs=removed.extend) == 1
        assert removed == []  # the live task writes on in it
        store.relaunch(taskid, token, None)
        store.archive(taskid, Ending(Status.COMPLETED, exitcode=0), token_hash=token)
        assert store.clear_history(logs=removed.extend) == 1
        assert removed == [(taskid, str(logfile))]


def test_a_version_6_database_keeps_its_tasks_and_ids(db_path: Path):
    """The upgrade rebuilds sqlite's tasks table (a CHECK cannot be changed): the rows, the
    indexes and the id sequence go with it."""
    import sqlite3

    from taskwatcher.engine import schema

    with sqlite3.connect(db_path) as old:
        for step in schema.MIGRATIONS[:6]:
            for statement in step.sqlite:
                old.execute(statement)
        old.execute("PRAGMA user_version = 6")
        old.execute(
            "INSERT INTO tasks (id, name, status, reservetime, lastupdate, is_unique)"
            " VALUES (41, 'kept', 'RESERVED', ?, ?, 1)",
            (time.time(), time.time()),
        )
        old.execute(
            "INSERT INTO history (taskid, endtime, duration, feedback, outcome)"
            " VALUES (7, 2, 0, X'6e756c6c', 'EXPIRED')"
        )
    with open_store(db_path) as store:
        assert store.get_task(41).name == "kept"
        assert (store.get_task(41).attempt, store.get_task(41).attempts) == (1, 1)
        assert store.history_of(7).attempt == 1
        assert store.reserve("next") == 42
        from taskwatcher.engine.errors import UniqueConflict

        with pytest.raises(UniqueConflict):
            store.reserve("kept", unique=True)  # its index came along
    with sqlite3.connect(db_path) as upgraded:
        assert upgraded.execute("PRAGMA user_version").fetchone() == (schema.LATEST_VERSION,)
        assert upgraded.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_task_is_retried_on_postgresql(pg_url: str, tmp_path: Path):
    env = {**os.environ, "TASKWATCHER_DB": pg_url}
    result = subprocess.run(
        [str(BIN / "twrun"), "--output", "log", "--retries", "1", "--retry-delay", "0",
         "--", "sh", "-c", 'exit $((TASKWATCHER_ATTEMPT == 1))'],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    listed = subprocess.run(
        [str(BIN / "twctl"), "history", "--json"], capture_output=True, text=True, env=env
    )
    rows = sorted(json.loads(listed.stdout), key=lambda row: row["attempt"])
    assert [(row["attempt"], row["outcome"]) for row in rows] == [(1, "FAILED"), (2, "COMPLETED")]


def test_between_attempts_another_host_reads_the_last_output_and_kills_it(pg_url: str):
    env = {**os.environ, "TASKWATCHER_DB": pg_url}
    process = subprocess.Popen(
        [str(BIN / "twrun"), "--output", "log", "--retries", "1", "--retry-delay", "60",
         "--", "sh", "-c", "echo first; exit 1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    other = {**env, "TASKWATCHER_HOST": "other-host"}

    def twctl_there(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "twctl"), *args], capture_output=True, text=True, env=other, timeout=60
        )

    def retrying() -> list[dict]:
        return [t for t in json.loads(twctl_there("list", "--json").stdout) if t["attempt"] == 2]

    (task,) = wait_for(retrying)
    shown = twctl_there("log", str(task["taskid"]))
    assert (shown.returncode, shown.stdout) == (0, "first\n"), shown.stderr
    killed = twctl_there("kill", str(task["taskid"]))
    assert "KILLED" in killed.stdout, killed.stderr
    process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM


def test_the_token_of_a_store_write_is_checked_between_attempts(db_path: Path):
    """RETRYING is still the supervisor's row: nobody else may relaunch or retry it."""
    from taskwatcher.engine.errors import RowLost

    with open_store(db_path) as store:
        taskid = store.reserve("job")
        token = claim(store, taskid, attempts=3)
        store.retry(taskid, token, Ending(Status.FAILED, exitcode=1), store.now())
        with pytest.raises(RowLost):
            store.relaunch(taskid, "0" * len(TOKEN_HASH), None)
        assert store.get_task(taskid).status == "RETRYING"
