"""What a hostile name, info field or feedback value can do: nothing to the disk, the database
or the terminal. (That a signal needs pid and create time to match is test_faults_pid_reuse.)
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from taskwatcher.engine.store import open_store
from tests.fault_helpers import query, reserve, twctl, twctl_json, twrun, wait_running
from tests.helpers import BIN, on_a_terminal, run_cli, wait_for
from tests.store_helpers import claim, finish

PATHLIKE_NAMES = ["../../x", "/tmp/x", "$(touch pwned)", "`touch pwned`", "; touch pwned", "-rf"]
SQL_NAMES = ["Robert'); DROP TABLE tasks; --", 'x" OR "1"="1', "%"]
#: Would set the window title, ring the bell, clear the screen (also through C1 CSI),
#: overwrite the line and show the rest right to left; as a feedback value without the
#: carriage return, which ends a line.
TERMINAL_ATTACK = "evil\x1b]0;pwned\x07\x1b[2J\rX\x9b2J\u202eend"
ESCAPED = "evil\\x1b]0;pwned\\x07\\x1b[2J\\rX\\x9b2J\\u202eend"
FEEDBACK_ATTACK = TERMINAL_ATTACK.replace("\r", "")
FEEDBACK_ESCAPED = ESCAPED.replace("\\r", "")
#: `show` prints the feedback object as JSON, whose own escapes cover C0 controls.
FEEDBACK_AS_JSON = FEEDBACK_ESCAPED.replace("\\x1b", "\\u001b").replace("\\x07", "\\u0007")
RAW_PIECES = ["\x1b]0;", "\x07", "\x1b[2J", "\x9b", "\u202e"]
#: Every bidirectional control: each can reorder what a terminal shows after it.
BIDI = "".join(map(chr, [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]))
BIDI_ESCAPED = "".join(f"\\u{ord(char):04x}" for char in BIDI)
#: C1 controls, which terminals obey like their ESC forms (0x9b is CSI).
C1 = "".join(map(chr, range(0x80, 0xA0)))


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def test_names_and_info_never_reach_the_filesystem(tmp_path: Path) -> None:
    """The only paths derived for a task are feedback_<id>.log and task_<id>.log, from its
    integer id; no shell reads a name."""
    db = tmp_path / "deep" / "er" / "tasks.db"
    work = tmp_path / "work"
    work.mkdir()
    with open_store(db) as store:
        taskids = [store.reserve(name, info1=name) for name in PATHLIKE_NAMES]
    for taskid, name in zip(taskids, PATHLIKE_NAMES, strict=True):
        writes = 'echo "[name]$1" > "$TASKWATCHER_FEEDBACK"'
        result = run_cli(
            "twrun", "--db", db, "--taskid", taskid, f"--name={name}", f"--info2={name}",
            "--keep-feedback", "--", "sh", "-c", writes, "sh", name, cwd=work,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert [r["taskname"] for r in reversed(twctl_json(db, "history"))] == PATHLIKE_NAMES
    assert list(work.iterdir()) == []
    feedback_files = {f"deep/er/tasks-feedback/feedback_{n}.log" for n in range(1, 7)}
    database_files = {"deep", "deep/er", "deep/er/tasks.db", "deep/er/tasks.db-journal"}
    database_files |= {"deep/er/tasks-feedback", "deep/er/tasks-logs"}
    logs = {f"deep/er/tasks-logs/task_{n}.log" for n in range(1, 7)}
    written = {path for path in files_under(tmp_path) if not path.startswith("cache")}
    assert written - {"work"} == database_files | feedback_files | logs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def no_umask() -> None:
    os.umask(0)


def test_database_and_feedback_folder_are_private_whatever_the_umask(
    isolated_state: Path, request: pytest.FixtureRequest
) -> None:
    """Under umask 000 every file would be world-writable unless taskwatcher says otherwise."""
    result = subprocess.run(
        [BIN / "twctl", "reserve"], capture_output=True, text=True, preexec_fn=no_umask
    )
    taskid = int(result.stdout)
    twrun_argv = [BIN / "twrun", "--taskid", str(taskid), "--", "sleep", "60"]
    runner = subprocess.Popen(twrun_argv, preexec_fn=no_umask)
    request.addfinalizer(lambda: runner.terminate() or runner.wait(timeout=30))
    folder = isolated_state / "taskwatcher"
    wait_running(folder / "tasks.db", taskid)
    assert mode(isolated_state) == mode(folder) == mode(folder / "tasks-feedback") == 0o700
    for name in ("tasks.db", "tasks.db-journal"):
        assert mode(folder / name) == 0o600, name


def test_sql_in_names_is_only_text(db_path: Path) -> None:
    for name in SQL_NAMES:
        reserve(db_path, f"--name={name}", f"--info1={name}")
    assert [(r["name"], r["info1"]) for r in twctl_json(db_path, "list")] == [
        (name, name) for name in SQL_NAMES
    ]
    for name in SQL_NAMES:
        (only,) = twctl_json(db_path, "list", f"--name={name}")
        assert only["name"] == name
    assert "EXPIRED" in twctl(db_path, "killall", SQL_NAMES[0])
    assert [r["taskname"] for r in twctl_json(db_path, "history", f"--name={SQL_NAMES[0]}")] == [
        SQL_NAMES[0]
    ]
    assert len(twctl_json(db_path, "list")) == len(SQL_NAMES) - 1


def assert_escaped(output: str, *shown: str) -> None:
    """Each hostile text appears escaped and no piece of it raw.

    A raw carriage return shows as a broken escaped form, since text mode reads it as "\\n".
    """
    for text in shown or (ESCAPED,):
        assert text in output, output
    for piece in RAW_PIECES:
        assert piece not in output, repr(piece)


def test_control_characters_are_shown_escaped(db_path: Path, tmp_path: Path) -> None:
    taskid = reserve(db_path, f"--name={TERMINAL_ATTACK}", f"--info1={TERMINAL_ATTACK}")
    reports = 'printf "[message]%s\\n" "$1" > "$TASKWATCHER_FEEDBACK"; sleep 60'
    runner = twrun(
        db_path, taskid, "--feedpath", tmp_path,
        command=["sh", "-c", reports, "sh", FEEDBACK_ATTACK],
    )  # fmt: skip
    wait_running(db_path, taskid)
    wait_for(lambda: "message" in twctl(db_path, "feedback", str(taskid)))  # published
    twctl_bin = BIN / "twctl"
    wide = {**os.environ, "COLUMNS": "250"}
    both = (ESCAPED, FEEDBACK_ESCAPED)
    shown = (ESCAPED, FEEDBACK_AS_JSON)
    assert_escaped(twctl(db_path, "list"))
    assert_escaped(on_a_terminal(twctl_bin, "--db", db_path, "list"))
    assert_escaped(twctl(db_path, "watch", "--once", env=wide), *both)
    assert_escaped(on_a_terminal(twctl_bin, "--db", db_path, "watch", "--once"), *both)
    assert_escaped(twctl(db_path, "show", str(taskid)), *shown)
    assert_escaped(twctl(db_path, "kill", str(taskid)))
    runner.communicate(timeout=30)
    assert_escaped(twctl(db_path, "history"))
    assert_escaped(on_a_terminal(twctl_bin, "--db", db_path, "history"))
    assert_escaped(twctl(db_path, "show", str(taskid)), *shown)


HUGE = "x" * 128 * 1024
#: A cut cell: MAX_CELL (80) characters, the last one an ellipsis.
CUT = "x" * 79 + "…"


@pytest.fixture
def huge_fields(db_path: Path) -> list[int]:
    """Five live and five finished tasks whose info1 is 128 KiB."""
    with open_store(db_path) as store:
        taskids = [store.reserve("huge", info1=HUGE) for _ in range(10)]
        for taskid in taskids[5:]:
            store.cancel_reservation(taskid, "tester")
    return taskids


@pytest.mark.parametrize("command", ["list", "history"])
def test_long_cells_are_cut_in_tables(db_path: Path, huge_fields: list[int], command: str) -> None:
    plain = twctl(db_path, command)
    assert plain.count(CUT + " ") == 5 and "x" * 80 not in plain
    rich = on_a_terminal(BIN / "twctl", "--db", db_path, command)
    assert rich.count(CUT) == 5 and "x" * 80 not in rich
    (whole, *_) = twctl_json(db_path, command)
    assert whole["info1"] == HUGE


@pytest.mark.parametrize("which", [0, 9])
def test_show_cuts_long_values_except_in_json(
    db_path: Path, huge_fields: list[int], which: int
) -> None:
    taskid = str(huge_fields[which])
    lines = twctl(db_path, "show", taskid).splitlines()
    assert [line.split() for line in lines if line.startswith("info1")] == [["info1", CUT]]
    assert max(map(len, lines)) < 120
    assert twctl_json(db_path, "show", taskid)["info1"] == HUGE


def test_watch_cuts_long_names(db_path: Path) -> None:
    with open_store(db_path) as store:
        store.reserve(HUGE)
    frame = twctl(db_path, "watch", "--once", env={**os.environ, "COLUMNS": "250"})
    assert "…" in frame and "x" * 80 not in frame and len(frame.splitlines()) < 20


def test_every_bidi_control_is_shown_escaped(db_path: Path) -> None:
    name, shown = f"a{BIDI}b", f"a{BIDI_ESCAPED}b"
    taskid = reserve(db_path, f"--name={name}")
    orphan = reserve(db_path, f"--name={name}")
    query(
        db_path,
        "UPDATE tasks SET status = 'RUNNING', starttime = reservetime, host = ?,"
        " supervisor_pid = ?, supervisor_ctime = 1.0 WHERE id = ?",
        (socket.gethostname(), 2**22, orphan),
    )
    twctl_bin = BIN / "twctl"
    outputs = [
        twctl(db_path, "update"),
        twctl(db_path, "list"),
        on_a_terminal(twctl_bin, "--db", db_path, "list"),
        twctl(db_path, "watch", "--once", env={**os.environ, "COLUMNS": "250"}),
        twctl(db_path, "show", str(taskid)),
        twctl(db_path, "kill", str(taskid)),
        twctl(db_path, "history"),
        on_a_terminal(twctl_bin, "--db", db_path, "history"),
        twctl(db_path, "show", str(taskid)),
    ]
    for output in outputs:
        assert shown in output, output
        assert not set(BIDI) & set(output), output


def test_json_escapes_c1_controls_and_stays_faithful(db_path: Path, tmp_path: Path) -> None:
    text = f"a{C1}b"
    with open_store(db_path) as store:
        live = store.reserve(text)
        done = store.reserve(text)
        token_hash = claim(store, done)
        finish(store, done, "COMPLETED", feedback={"m": text}, token_hash=token_hash)
    feedback = tmp_path / "feedback.log"
    feedback.write_text(f"[m]{text}\n")
    results = {
        ("list", "--json"): lambda got: got[0]["name"],
        ("history", "--json"): lambda got: got[0]["taskname"],
        ("show", str(live), "--json"): lambda got: got["name"],
        ("show", str(done), "--json"): lambda got: got["feedback"]["m"],
        ("feedback", str(done)): lambda got: got["m"],
        ("feedback", str(done), "--pretty"): lambda got: got["m"],
    }
    for args, value in results.items():
        output = twctl(db_path, *args)
        assert "\\u009b" in output and not set(C1) & set(output), output
        assert value(json.loads(output)) == text
    for pretty in ([], ["--pretty"]):
        output = run_cli("twparse", feedback, *pretty).stdout
        assert "\\u009b" in output and not set(C1) & set(output), output
        assert json.loads(output) == {"m": text}
