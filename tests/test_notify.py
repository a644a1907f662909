"""sd_notify under twrun: real clients (systemd-notify, the sdnotify package, raw sendmsg)
talking to a real twrun; who may speak; what each message does."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from taskwatcher.engine.notify import parse
from taskwatcher.engine.supervision import FeedbackMerge
from tests.helpers import run_cli, start_cli, wait_for
from tests.run_helpers import PY, history, script

#: A raw client: sends each argv word as one datagram (`\n` in a word separates pairs).
RAW_CLIENT = """\
import os, socket, sys, time
address = os.environ["NOTIFY_SOCKET"].replace("@", "\\0", 1)
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
    for word in sys.argv[1:]:
        if word.startswith("sleep:"):
            time.sleep(float(word[6:]))
        elif word.startswith("exit:"):
            sys.exit(int(word[5:]))
        else:
            client.sendto(word.replace("\\\\n", "\\n").encode(), address)
"""


def raw(tmp_path: Path, *words: str) -> list[str]:
    """The argv of a task that speaks sd_notify with plain sendto() calls."""
    return [PY, str(script(tmp_path, "client.py", RAW_CLIENT)), *words]


def twrun(db: Path, *args: str, timeout: float = 60) -> int:
    result = run_cli("twrun", "--db", db, "--output", "log", *args, timeout=timeout)
    return result.returncode


def test_systemd_notify_ready_and_status_exit_0_and_are_recorded(db_path: Path) -> None:
    """Debian's systemd-notify waits for its barrier to be answered: it must exit 0."""
    steps = (
        'systemd-notify --ready --status="step 1 of 2" || exit 9; '
        f'"{PY}" -c "import time; time.sleep(3)"'
    )
    runner = start_cli("twrun", "--db", db_path, "--output", "log", "--", "sh", "-c", steps)

    def listed() -> dict | None:
        tasks = json.loads(run_cli("twctl", "--db", db_path, "list", "--json").stdout or "[]")
        return tasks[0] if tasks and tasks[0]["said"] else None

    task = wait_for(listed)
    assert task["said"] == "step 1 of 2" and task["ready"] is not None
    feedback = run_cli("twctl", "--db", db_path, "feedback", str(task["taskid"]))
    assert json.loads(feedback.stdout) == {"status": "step 1 of 2"}
    assert runner.wait(timeout=60) == 0
    record = history(db_path, task["taskid"])
    assert (record.outcome, record.feedback) == ("COMPLETED", {"status": "step 1 of 2"})


def test_watchdog_pings_keep_a_task_alive_and_silence_times_it_out(
    db_path: Path, tmp_path: Path
) -> None:
    pings = [word for _ in range(8) for word in ("WATCHDOG=1", "sleep:0.25")]
    assert twrun(db_path, "--timeout", "1", "--", *raw(tmp_path, *pings)) == 0
    assert history(db_path, 1).outcome == "COMPLETED"
    assert twrun(db_path, "--timeout", "1", "--", *raw(tmp_path, "WATCHDOG=1", "sleep:60")) == 124
    assert history(db_path, 2).termerror == "no heartbeat for 1 s"


def test_the_sdnotify_package_works_unchanged(db_path: Path, tmp_path: Path) -> None:
    program = script(
        tmp_path,
        "service.py",
        """\
        import time, sdnotify
        notifier = sdnotify.SystemdNotifier()
        notifier.notify("READY=1\\nSTATUS=serving")
        for _ in range(8):
            notifier.notify("WATCHDOG=1")
            time.sleep(0.25)
        """,
    )
    assert twrun(db_path, "--timeout", "1", "--", PY, str(program)) == 0
    record = history(db_path, 1)
    assert (record.outcome, record.feedback) == ("COMPLETED", {"status": "serving"})


def test_extend_timeout_lets_one_slow_step_pass_once(db_path: Path, tmp_path: Path) -> None:
    slow = raw(tmp_path, "EXTEND_TIMEOUT_USEC=3000000", "sleep:2", "exit:0")
    assert twrun(db_path, "--timeout", "1", "--max-runtime", "1", "--", *slow) == 0
    twice = raw(tmp_path, "EXTEND_TIMEOUT_USEC=2000000", "sleep:1", "WATCHDOG=1", "sleep:60")
    assert twrun(db_path, "--timeout", "1", "--", *twice) == 124
    assert 2 <= history(db_path, 2).duration < 20  # the extension held, then ran out once


def test_watchdog_usec_sets_the_timeout_and_trigger_ends_the_task(
    db_path: Path, tmp_path: Path
) -> None:
    runner = start_cli(
        "twrun", "--db", db_path, "--output", "log", "--timeout", "1",
        "--", *raw(tmp_path, "WATCHDOG_USEC=5000000", "sleep:4", "exit:0"),
    )  # fmt: skip
    wait_for(lambda: _listed(db_path) and _listed(db_path)[0]["timeout"] == 5)
    assert runner.wait(timeout=60) == 0
    trigger = raw(tmp_path, "WATCHDOG=trigger", "sleep:60")
    assert twrun(db_path, "--timeout", "30", "--", *trigger) == 124
    record = history(db_path, 2)
    assert (record.outcome, record.termerror) == ("TIMEOUT", "watchdog triggered by the task")
    assert record.duration < 20


def _listed(db: Path) -> list[dict]:
    return json.loads(run_cli("twctl", "--db", db, "list", "--json").stdout or "[]")


def test_errno_goes_into_termerror_when_the_task_fails_and_stopping_is_recorded(
    db_path: Path, tmp_path: Path
) -> None:
    failing = raw(tmp_path, "STOPPING=1\nERRNO=2", "exit:1")
    assert twrun(db_path, "--", *failing) == 1
    assert history(db_path, 1).termerror == "exit status 1; errno 2 (No such file or directory)"
    stopping = raw(tmp_path, "STOPPING=1", "sleep:3", "exit:0")
    runner = start_cli("twrun", "--db", db_path, "--output", "log", "--", *stopping)
    wait_for(lambda: (listed := _listed(db_path)) and listed[0]["stopping"] is not None)
    assert runner.wait(timeout=60) == 0
    assert history(db_path, 2).termerror is None  # ERRNO= alone never marks a success


def test_status_and_a_status_line_of_the_feedback_file_the_later_wins(
    db_path: Path, tmp_path: Path
) -> None:
    program = script(
        tmp_path,
        "both.py",
        """\
        import os, socket, time
        address = os.environ["NOTIFY_SOCKET"].replace("@", "\\0", 1)
        feedback = open(os.environ["TASKWATCHER_FEEDBACK"], "a")
        def say(text):
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(text.encode(), address)
        feedback.write("[status]from the file\\n"); feedback.flush(); time.sleep(1.3)
        say("STATUS=from sd_notify"); time.sleep(0.3)
        """,
    )
    assert twrun(db_path, "--", PY, str(program)) == 0
    assert history(db_path, 1).feedback == {"status": "from sd_notify"}
    reverse = script(
        tmp_path,
        "reverse.py",
        """\
        import os, socket, time
        address = os.environ["NOTIFY_SOCKET"].replace("@", "\\0", 1)
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"STATUS=from sd_notify", address)
        time.sleep(1.3)
        with open(os.environ["TASKWATCHER_FEEDBACK"], "a") as feedback:
            feedback.write("[status]from the file\\n")
        time.sleep(0.3)
        """,
    )
    assert twrun(db_path, "--", PY, str(reverse)) == 0
    assert history(db_path, 2).feedback == {"status": "from the file"}


def test_only_the_tasks_processes_are_heard_and_bad_datagrams_do_no_harm(
    db_path: Path, tmp_path: Path
) -> None:
    published = tmp_path / "address"
    program = script(
        tmp_path,
        "listener.py",
        f"""\
        import os, time
        open({str(published)!r}, "w").write(os.environ["NOTIFY_SOCKET"])
        time.sleep(2.5)
        """,
    )
    runner = start_cli("twrun", "--db", db_path, "--output", "log", "--", PY, str(program))
    address = wait_for(lambda: published.exists() and published.read_text()).replace("@", "\0", 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stranger:
        stranger.sendto(b"STATUS=forged\nWATCHDOG=trigger", address)  # not the task's: ignored
        stranger.sendto(b"\xff\xfe=\x00\nno equals sign\n=empty key", address)
        stranger.sendto(b"STATUS=" + b"x" * 10_000, address)
    assert runner.wait(timeout=60) == 0
    record = history(db_path, 1)
    assert (record.outcome, record.feedback) == ("COMPLETED", None)


def test_the_child_gets_the_socket_and_the_watchdog_as_systemd_gives_them(
    db_path: Path, tmp_path: Path
) -> None:
    shown = tmp_path / "env.json"
    dump = f"import json, os; json.dump(dict(os.environ), open({str(shown)!r}, 'w'))"
    env = {**os.environ, "WATCHDOG_PID": "1", "WATCHDOG_USEC": "5"}
    assert run_cli("twrun", "--db", db_path, "--", PY, "-c", dump, env=env).returncode == 0
    untimed = json.loads(shown.read_text())
    folder = Path(untimed["NOTIFY_SOCKET"]).parent
    assert folder.name.startswith("taskwatcher-notify-") and not folder.exists()  # removed
    assert "WATCHDOG_USEC" not in untimed and "WATCHDOG_PID" not in untimed
    run_cli("twrun", "--db", db_path, "--timeout", "2.5", "--", PY, "-c", dump)
    assert json.loads(shown.read_text())["WATCHDOG_USEC"] == "2500000"
    run_cli("twrun", "--db", db_path, "--timeout", "2.5", "--heartbeat", "feedback",
            "--", PY, "-c", dump)  # fmt: skip
    assert "WATCHDOG_USEC" not in json.loads(shown.read_text())  # pings would not count


def test_the_socket_is_private_to_the_tasks_user(db_path: Path, tmp_path: Path) -> None:
    shown = tmp_path / "mode"
    looks = f"import os, stat; open({str(shown)!r}, 'w').write(oct(stat.S_IMODE("
    looks += "os.stat(os.path.dirname(os.environ['NOTIFY_SOCKET'])).st_mode)))"
    assert run_cli("twrun", "--db", db_path, "--", PY, "-c", looks).returncode == 0
    assert shown.read_text() == "0o700"


@pytest.mark.parametrize(
    "message",
    ["WATCHDOG_USEC=" + "9" * 400, "EXTEND_TIMEOUT_USEC=" + "9" * 400, "ERRNO=2147483648",
     "WATCHDOG_USEC=18446744073709551616", "ERRNO=0"],
)  # fmt: skip
def test_numbers_out_of_range_are_ignored_without_harm(
    db_path: Path, tmp_path: Path, message: str
) -> None:
    assert twrun(db_path, "--timeout", "5", "--", *raw(tmp_path, message, "exit:3")) == 3
    record = history(db_path, 1)
    assert (record.outcome, record.termerror) == ("FAILED", "exit status 3")


def test_last_words_before_the_exit_are_heard_even_after_a_burst(
    db_path: Path, tmp_path: Path
) -> None:
    """A burst puts the socket in its batched mode; what the task says just before it exits
    must still reach history."""
    burst = ["WATCHDOG=1"] * 6
    last = raw(tmp_path, *burst, "STATUS=final words\nERRNO=2", "exit:1")
    assert twrun(db_path, "--", *last) == 1
    record = history(db_path, 1)
    assert record.feedback == {"status": "final words"}
    assert record.termerror == "exit status 1; errno 2 (No such file or directory)"


def test_a_task_is_heard_while_it_is_being_stopped(db_path: Path, tmp_path: Path) -> None:
    """systemd-notify waits for its barrier: from a SIGTERM handler it must not time out."""
    polite = (
        "trap 'systemd-notify STOPPING=1 STATUS=\"shut down cleanly\" && exit 0; exit 7' TERM; "
        "systemd-notify STATUS=serving; while :; do sleep 0.1; done"
    )
    result = run_cli(
        "twrun", "--db", db_path, "--output", "log", "--max-runtime", "1", "--grace", "10",
        "--", "sh", "-c", polite,
    )  # fmt: skip
    assert result.returncode == 124, result.stderr
    record = history(db_path, 1)
    assert (record.termsignal, record.feedback) == ("SIGTERM", {"status": "shut down cleanly"})
    assert record.duration < 8


def test_an_orphan_the_supervisor_adopted_is_heard(db_path: Path, tmp_path: Path) -> None:
    """A daemon that forks, calls setsid and forks again is re-parented to twrun (a
    subreaper), not to the task's main process: it is still the task's."""
    daemon = script(
        tmp_path,
        "daemon.py",
        """        import os, socket, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(0.3)  # by now its parent is gone: adopted by twrun
                address = os.environ["NOTIFY_SOCKET"]
                socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"STATUS=daemon", address)
                time.sleep(5)
            os._exit(0)
        time.sleep(1.5)
        """,
    )
    assert twrun(db_path, "--grace", "1", "--", PY, str(daemon)) == 0
    assert history(db_path, 1).feedback == {"status": "daemon"}


@pytest.mark.parametrize(
    ("datagram", "pairs"),
    [
        (b"READY=1\nSTATUS=a=b\n", [("READY", "1"), ("STATUS", "a=b")]),
        (b"WATCHDOG=1", [("WATCHDOG", "1")]),
        (b"\n\nno-equals\n=x\nSTATUS=\xff\nSTATUS=", [("STATUS", "")]),
    ],
)
def test_a_datagram_is_newline_separated_pairs(datagram: bytes, pairs: list) -> None:
    assert parse(datagram) == pairs


def test_feedback_merge_lets_the_later_status_win() -> None:
    merge = FeedbackMerge()
    assert merge.values() is None
    merge.from_notify("a")
    assert merge.values() == {"status": "a"}
    merge.from_file({"progress": "1"})  # no status in the file: sd_notify's stands
    assert merge.values() == {"progress": "1", "status": "a"}
    merge.from_file({"progress": "2", "status": "b"})
    assert merge.values() == {"progress": "2", "status": "b"}
    merge.from_file({"progress": "3", "status": "b"})  # the same line again is not newer
    merge.from_notify("c")
    assert merge.values() == {"progress": "3", "status": "c"}
