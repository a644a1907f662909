"""`twrun --on-exit` / `--on-failure`: real hooks run after real tasks are archived, told how
the task ended, bounded by their timeout, and unable to change the record or the exit status."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fault_helpers import assert_one_line, gone, reserve, twctl, twctl_json, wait_running
from tests.helpers import BIN, run_cli, wait_for


def twrun(db: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli("twrun", "--db", db, "--output", "log", *argv, timeout=timeout)


FEEDBACK_THEN = 'printf "[step]last\\n" > "$TASKWATCHER_FEEDBACK"; '


@pytest.mark.parametrize(
    ("script", "options", "outcome", "code"),
    [
        ("exit 0", [], "COMPLETED", 0),
        ("exit 3", [], "FAILED", 3),
        ("kill -USR1 $$", [], "KILLED", 138),
        ("sleep 30", ["--timeout", "0.5"], "TIMEOUT", 124),
        ("sleep 30", ["--max-runtime", "0.5"], "TIMEOUT", 124),
    ],
)
def test_a_hook_is_told_how_the_task_ended(db_path, reporter, script, options, outcome, code):
    result = twrun(
        db_path, "--name", "job", "--on-exit", reporter(), *options,
        "--", "sh", "-c", FEEDBACK_THEN + script,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    (ended,) = twctl_json(db_path, "history")
    told = reporter.told()
    assert told is not None, result.stderr
    feedback_json = told.pop("TASKWATCHER_FEEDBACK_JSON")
    for inherited in [key for key in os.environ if key.startswith("TASKWATCHER_")]:
        assert told.pop(inherited) == os.environ[inherited]  # the test run's own settings
    assert told == {
        "TASKWATCHER_TASKID": str(ended["taskid"]),
        "TASKWATCHER_NAME": "job",
        "TASKWATCHER_OUTCOME": outcome,
        "TASKWATCHER_EXITCODE": str(code),
        "TASKWATCHER_DURATION": f"{ended['duration']:.3f}",
        "TASKWATCHER_LOG": ended["logfile"],
        "TASKWATCHER_ATTEMPT": "1",
        "feedback": ended["feedback"],
    }
    assert ended["outcome"] == outcome
    if outcome != "TIMEOUT":  # a busy machine may time the task out before it writes
        assert ended["feedback"] == {"step": "last"}
    assert not Path(feedback_json).exists() and not Path(feedback_json).parent.exists()


def test_a_killed_task_and_one_that_could_not_start_run_their_hooks(db_path, reporter):
    taskid = reserve(db_path, "--name", "victim")
    argv = [BIN / "twrun", "--db", db_path, "--taskid", taskid, "--output", "log"]
    running = subprocess.Popen(
        [*map(str, argv), "--on-failure", reporter("killed.json"), "--", "sleep", "30"],
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_running(db_path, taskid)
    twctl(db_path, "kill", str(taskid))
    _, stderr = running.communicate(timeout=60)
    assert (reporter.told("killed.json") or {}).get("TASKWATCHER_OUTCOME") == "KILLED", stderr

    result = twrun(db_path, "--on-failure", reporter("missing.json"), "--", "no-such-command-x")
    assert result.returncode == 127
    told = reporter.told("missing.json")
    assert told is not None, result.stderr
    assert (told["TASKWATCHER_OUTCOME"], told["TASKWATCHER_EXITCODE"]) == ("FAILED", "127")
    assert told["feedback"] is None  # it wrote none, as history says


def test_on_failure_hooks_skip_a_completed_task(db_path, reporter):
    ok = twrun(
        db_path, "--on-failure", reporter("a.json"), "--on-exit", reporter("b.json"), "--", "true"
    )
    assert ok.returncode == 0, ok.stderr
    assert reporter.told("a.json") is None and reporter.told("b.json") is not None


def test_a_failing_hook_is_a_warning_and_a_log_line_never_a_changed_outcome(db_path, reporter):
    result = twrun(
        db_path, "--on-exit", "sh -c 'exit 7'", "--on-exit", "no-such-hook-x",
        "--on-exit", reporter(), "--", "sh", "-c", "echo done",
    )  # fmt: skip
    assert result.returncode == 0
    warnings = result.stderr.splitlines()
    assert warnings == [
        "twrun: warning: hook sh -c 'exit 7': exited with status 7",
        "twrun: warning: hook no-such-hook-x: command not found: no-such-hook-x",
    ]
    assert reporter.told() is not None  # the hooks after a failed one still run
    (ended,) = twctl_json(db_path, "history")
    assert ended["outcome"] == "COMPLETED" and ended["exitcode"] == 0
    log = Path(ended["logfile"]).read_text()
    assert log == "done\n" + "".join(line.replace("warning: ", "") + "\n" for line in warnings)


def test_a_hook_that_hangs_is_stopped_with_what_it_started(db_path, tmp_path):
    pids = tmp_path / "pids"
    hook = f"sh -c 'sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait'"
    started = time.monotonic()
    result = twrun(
        db_path, "--hook-timeout", "0.5", "--grace", "1", "--on-exit", hook, "--", "true"
    )
    assert result.returncode == 0
    assert time.monotonic() - started < 30
    assert_one_line(result.stderr, "twrun: warning: hook sh -c")
    assert "still running after 0.5 s: stopped" in result.stderr
    for pid in map(int, pids.read_text().split()):
        assert gone(pid)


def test_wait_returns_when_the_task_is_archived_before_its_hooks(db_path, tmp_path):
    gate = tmp_path / "gate"
    taskid = reserve(db_path)
    hook = f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done'"
    argv = [BIN / "twrun", "--db", db_path, "--taskid", taskid, "--on-exit", hook, "--", "true"]
    supervisor = subprocess.Popen(list(map(str, argv)), stdout=subprocess.DEVNULL)
    try:
        waited = run_cli("twctl", "--db", db_path, "wait", str(taskid), "--timeout", "30")
        assert waited.returncode == 0, waited.stderr
        assert supervisor.poll() is None  # its hook still holds it
    finally:
        gate.touch()
    assert supervisor.wait(timeout=60) == 0


@pytest.mark.parametrize(("option", "value"), [("--on-exit", "echo 'unclosed"), ("--on-exit", " ")])
def test_a_hook_that_cannot_be_split_is_refused_before_anything_runs(db_path, option, value):
    result = run_cli("twrun", "--db", db_path, option, value, "--", "true")
    assert result.returncode == 125
    assert_one_line(result.stderr, "twrun: ")
    assert not db_path.exists() or twctl_json(db_path, "history") == []


def test_hooks_leave_nothing_when_none_applies(db_path):
    result = twrun(db_path, "--on-failure", "sh -c 'exit 9'", "--", "true")
    assert (result.returncode, result.stderr) == (0, "")


def test_ctrl_c_during_a_hook_stops_it_and_keeps_the_task_s_status(db_path, tmp_path):
    pid_file, second = tmp_path / "hookpid", tmp_path / "second"
    argv = [
        BIN / "twrun", "--db", db_path, "--output", "log",
        "--on-exit", f"sh -c 'echo $$ > {pid_file}; sleep 60'", "--on-exit", f"touch {second}",
        "--", "sh", "-c", "exit 4",
    ]  # fmt: skip
    supervisor = subprocess.Popen(list(map(str, argv)), stderr=subprocess.PIPE, text=True)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    supervisor.send_signal(signal.SIGINT)
    _, stderr = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 4
    assert "interrupted" in assert_one_line(stderr, "twrun: warning: ")
    assert gone(int(pid_file.read_text())) and not second.exists()


def test_sigterm_of_twrun_during_a_hook_stops_the_hook_s_group(db_path, tmp_path):
    pids = tmp_path / "pids"
    hook = f"sh -c 'sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait'"
    argv = [BIN / "twrun", "--db", db_path, "--on-exit", hook, "--", "sh", "-c", "exit 5"]
    supervisor = subprocess.Popen(list(map(str, argv)), stderr=subprocess.PIPE, text=True)
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    supervisor.terminate()
    _, stderr = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 5, stderr
    assert "interrupted" in assert_one_line(stderr, "twrun: warning: ")
    for pid in map(int, pids.read_text().split()):
        assert gone(pid)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("taskwatcher-hook-")]


def test_a_hook_starts_clean_stdin_closed_signals_default_no_notify_socket(db_path, tmp_path):
    seen = tmp_path / "seen"
    probe = (
        f'{{ grep -E "^Sig(Ign|Blk)" /proc/self/status; read line || echo "stdin: eof";'
        f' echo "notify: ${{NOTIFY_SOCKET:-none}} ${{WATCHDOG_USEC:-none}}"; }} > {seen}'
    )
    env = {**os.environ, "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "5000000"}
    result = subprocess.run(
        [str(BIN / "twrun"), "--db", str(db_path), "--on-exit", shlex.join(["sh", "-c", probe]),
         "--", "true"],
        input="a line the hook must not read\n", capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in seen.read_text().splitlines())
    # What twrun was started with it passes on (an ignored SIGINT stays so), nothing more:
    # the same as a shell started here directly has.
    direct = subprocess.run(
        ["sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"], capture_output=True, text=True
    ).stdout
    for line in direct.splitlines():
        mask, value = line.split(":", 1)
        assert int(lines[mask], 16) == int(value, 16), mask
    assert lines["stdin"].strip() == "eof" and lines["notify"].strip() == "none none"


def test_what_a_hook_leaves_beside_the_feedback_json_goes_with_it(db_path, tmp_path):
    hook = 'sh -c \'touch "$TASKWATCHER_FEEDBACK_JSON.bak"; echo "$TASKWATCHER_FEEDBACK_JSON"\''
    result = twrun(db_path, "--on-exit", hook, "--", "true")
    assert (result.returncode, result.stderr) == (0, "")
    folder = Path(result.stdout.strip()).parent
    assert folder.name.startswith("taskwatcher-hook-") and not folder.exists()
