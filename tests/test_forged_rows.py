"""A database is data, not authority: a forged row never makes a command signal or read anything.

Anyone who can write a database can forge a live row. Here the forger names processes the
test started outside taskwatcher (a `sleep`, which SIGTERM, SIGKILL and SIGUSR1 would all
end: still running afterwards means it received none of them) and a file only its owner may
read. Every command that housekeeps, kills or reads feedback is run on that database.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from taskwatcher.engine.ownership import Owner, token_digest
from taskwatcher.engine.store import open_store
from tests.fault_helpers import query, reserve, runs, twctl, twctl_json, twrun, wait_running
from tests.helpers import run_cli, wait_for

#: A pid no process holds (Linux's PID_MAX_LIMIT - 1): a supervisor that has vanished.
VANISHED = 2**22 - 1
SECRET = "[password]hunter2\n"


def forge(db: Path, name: str = "forged", **columns: object) -> int:
    """Insert a live RUNNING row with plain SQL, the way a hostile writer would."""
    with open_store(db):
        pass  # the schema, as any first command would create it
    now = time.time()
    row = {
        "name": name,
        "status": "RUNNING",
        "feedback": 0,
        "reservetime": now,
        "starttime": now,
        "lastupdate": now,
        "host": socket.gethostname(),
        "supervisor_pid": VANISHED,
        "supervisor_ctime": 1.0,
        "token_hash": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
        "uid": 0,
        **columns,
    }
    marks = ", ".join("?" * len(row))
    query(db, f"INSERT INTO tasks ({', '.join(row)}) VALUES ({marks})", tuple(row.values()))
    ((taskid,),) = query(db, "SELECT max(id) FROM tasks")
    return taskid


def naming(process: psutil.Process) -> dict[str, object]:
    """Row columns that name a live process as the task's leader and group."""
    return {"pid": process.pid, "pgid": process.pid, "child_ctime": process.create_time()}


COMMANDS = {
    "history": lambda taskid: ["history"],
    "list": lambda taskid: ["list"],
    "update": lambda taskid: ["update"],
    "kill": lambda taskid: ["kill", str(taskid)],
    "killall": lambda taskid: ["killall", "forged"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_forged_row_of_a_vanished_supervisor_signals_nobody(
    db_path: Path, stranger: psutil.Process, command: str
) -> None:
    """pid and create time are public: matching them proves a process alive, not the task's."""
    taskid = forge(db_path, **naming(stranger))
    twctl(db_path, *COMMANDS[command](taskid))
    assert runs(stranger)
    (record,) = twctl_json(db_path, "history")
    assert (record["taskid"], record["outcome"], record["termsignal"]) == (taskid, "LOST", None)


def test_forged_row_naming_pid_1_as_leader_signals_nobody(db_path: Path) -> None:
    """killpg(1) would reach every process: the row's pgid is never used to signal."""
    init = psutil.Process(1)
    forge(db_path, pid=1, pgid=1, child_ctime=init.create_time())
    twctl(db_path, "update")
    assert init.is_running()
    assert twctl_json(db_path, "history")[0]["outcome"] == "LOST"


def test_forged_row_naming_a_live_stranger_as_supervisor_gets_it_no_signal(
    db_path: Path, stranger: psutil.Process
) -> None:
    """kill wakes a supervisor through its socket, never by signalling a recorded pid."""
    taskid = forge(db_path, supervisor_pid=stranger.pid, supervisor_ctime=stranger.create_time())
    result = twctl(db_path, "kill", str(taskid), "--wait", "1", code=1)
    assert result == ""
    assert runs(stranger)
    (row,) = twctl_json(db_path, "list")
    assert row["kill_request"]  # the request stays on the row, for a real supervisor to read


READERS = {
    "list": lambda taskid: ["list"],
    "history": lambda taskid: ["history"],
    "feedback": lambda taskid: ["feedback", str(taskid)],
    "show": lambda taskid: ["show", str(taskid)],
    "watch": lambda taskid: ["watch", "--once"],
}


@pytest.mark.parametrize("command", READERS)
def test_forged_feedback_path_is_never_read(
    db_path: Path, tmp_path: Path, stranger: psutil.Process, command: str
) -> None:
    """No command opens a path read from the database; only a supervisor reads its own file."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "feedback_1.log"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    alive = {"supervisor_pid": stranger.pid, "supervisor_ctime": stranger.create_time()}
    live = forge(db_path, "live", feedback=1, feedpath=str(secret), **alive)
    forge(db_path, "vanished", feedback=1, feedpath=str(secret))
    assert "hunter2" not in twctl(db_path, *READERS[command](live))
    dump = "\n".join(map(str, query(db_path, "SELECT * FROM history")))
    dump += "\n".join(map(str, query(db_path, "SELECT * FROM feedbacks")))
    assert "hunter2" not in dump


def test_a_process_is_proven_only_by_its_token_and_its_user(tmp_path: Path) -> None:
    """The token must be in the environment, and every user id must be the recorded one,
    except for root acting on a task of root's, which may have dropped to another user."""
    token = secrets.token_hex(16)
    env = {"PATH": "/usr/bin:/bin", "TASKWATCHER_TOKEN": token}
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    mixed = ["setpriv", "--ruid=65534"]  # real uid nobody, effective uid root: a set-uid program
    started = {
        "ours": subprocess.Popen(["sleep", "60"], env=env),
        "no token": subprocess.Popen(["sleep", "60"], env={"PATH": env["PATH"]}),
        "nobody's": subprocess.Popen([*nobody, "sleep", "60"], env=env),
        "mixed": subprocess.Popen([*mixed, "sleep", "60"], env=env),
    }
    try:
        time.sleep(0.2)  # let setpriv exec sleep, so each environment is the final one
        of_nobody = Owner(token_digest(token), 65534)
        proven = {name: of_nobody.proves(child.pid) for name, child in started.items()}
        assert proven == {"ours": False, "no token": False, "nobody's": True, "mixed": False}
        of_root = Owner(token_digest(token), 0)
        proven = {name: of_root.proves(child.pid) for name, child in started.items()}
        assert proven == {"ours": True, "no token": False, "nobody's": True, "mixed": True}
        assert Owner(token_digest("other"), 0).proves(started["ours"].pid) is False
        assert sorted(of_nobody.processes()) == [started["nobody's"].pid]
    finally:
        for child in started.values():
            child.kill()
            child.wait()


def supervisor_socket_names() -> list[str]:
    """What every local user can see of running supervisors: their abstract socket names."""
    with open("/proc/net/unix") as table:
        return re.findall(r"@taskwatcher/([0-9a-f]{64})", table.read())


def test_what_others_can_see_of_a_supervisor_cannot_be_forged_into_its_row(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Socket names are public: one written as a row's token digest proves nothing."""
    private = tmp_path / "private.db"
    taskid = reserve(private)
    runner = twrun(private, taskid, "--grace", "1", command=["sleep", "60"])
    request.addfinalizer(lambda: runner.kill() or runner.wait())
    row = wait_running(private, taskid)
    names = wait_for(supervisor_socket_names)
    assert row["token_hash"] not in names
    bait = tmp_path / "bait.db"
    for name in names:
        forge(bait, "bait", token_hash=name)
    twctl(bait, "list")
    assert runner.poll() is None and runs(psutil.Process(row["pid"]))
    assert [record["outcome"] for record in twctl_json(bait, "history")] == ["LOST"] * len(names)


def test_a_row_copying_a_running_tasks_digest_finds_its_supervisor_alive(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Even a writer who read the real digest gets nothing killed: the supervisor answers."""
    private = tmp_path / "private.db"
    taskid = reserve(private)
    runner = twrun(private, taskid, "--grace", "1", command=["sleep", "60"])
    request.addfinalizer(lambda: runner.kill() or runner.wait())
    row = wait_running(private, taskid)
    bait = tmp_path / "bait.db"
    forge(bait, "bait", token_hash=row["token_hash"])
    twctl(bait, "update")
    assert runner.poll() is None and runs(psutil.Process(row["pid"]))
    assert [task["name"] for task in twctl_json(bait, "list")] == ["bait"]


#: Values no taskwatcher writes, in the columns an editor of the database might garble
#: (a case of its own for each, but the columns of retries: one case for the three).
GARBLED: dict[str, object] = {
    "starttime": "soon",
    "heartbeat": b"\xff\x00",
    "timeout": "thirty",
    "command": "[not json",
    "name": b"\xff\xfe",
    "host": b"\x00",
    "kill_request": b"\xff",
    "token_hash": b"\x01" * 64,
    "pid": "many",
    "attempts": {"attempt": "second", "attempts": b"\xff", "retry_at": "later"},
}
#: The commands that read every row; those run for each task id, after an `update`.
EVERY_ROW = [
    ["list"], ["list", "--json"], ["history"], ["history", "--json"], ["update"],
    ["watch", "--once"], ["metrics"], ["killall", "forged", "--wait", "1"],
]  # fmt: skip
EACH_TASK = [["show"], ["show", "--json"], ["feedback"], ["kill", "--wait", "1"]]


@pytest.mark.parametrize("each", [None, *EACH_TASK], ids=lambda each: " ".join(each or ["all"]))
def test_a_garbled_row_is_no_traceback_anywhere(db_path: Path, each: list[str] | None) -> None:
    """One database holds a row per garbled column (each garbled alone, with garbled
    feedback), and a garbled history row: the commands that read every row read them all,
    and each command about one task reads each of them."""
    garbled_in: dict[int, str] = {}
    for column, garbled in GARBLED.items():
        columns = garbled if isinstance(garbled, dict) else {column: garbled}
        taskid = forge(db_path, **columns, feedback=1)  # type: ignore[arg-type]
        garbled_in[taskid] = column
        query(
            db_path,
            "INSERT INTO feedbacks (id, feedback, lastupdate) VALUES (?, 'garbage{', 0)",
            (taskid,),
        )
    query(
        db_path,
        "INSERT INTO history (taskid, endtime, duration, feedback, outcome, command, attempt)"
        " VALUES (99, 'x', 0, x'ff00', 'COMPLETED', '{', 'x')",
    )
    if each is None:
        runs = [(command, "every row") for command in EVERY_ROW]
    else:
        runs = [(["update"], "every row")] + [
            ([each[0], str(taskid), *each[1:]], column) for taskid, column in garbled_in.items()
        ]
    for command, garbled in runs:
        result = run_cli("twctl", "--db", db_path, *command)
        assert "Traceback" not in result.stderr, (command, garbled, result.stderr)
        assert result.returncode in (0, 1), (command, garbled, result.stderr)


def test_a_garbled_reservation_does_not_stop_a_running_supervisor(
    db_path: Path, tmp_path: Path
) -> None:
    """Every write expires stale reservations first: a damaged one must not break the write."""
    taskid = reserve(db_path)
    writes = 'for i in 1 2 3 4; do echo "[step]$i" >> "$TASKWATCHER_FEEDBACK"; sleep 0.3; done'
    runner = twrun(db_path, taskid, "--feedpath", tmp_path, command=["sh", "-c", writes])
    wait_running(db_path, taskid)
    query(
        db_path,
        "INSERT INTO tasks (name, status, reservetime, lastupdate, command, starttime)"
        " VALUES ('stale', 'RESERVED', 0, 0, '[not json', 'x')",
    )
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 0, stderr
    assert "Traceback" not in stderr
    ended = {record["taskname"]: record for record in twctl_json(db_path, "history")}
    assert ended["sh"]["feedback"] == {"step": "4"}
    assert ended["stale"]["outcome"] == "EXPIRED" and ended["stale"]["command"] is None
