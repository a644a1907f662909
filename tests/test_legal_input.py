"""Legal input that used to end in a traceback: bytes that are not UTF-8, users without a
passwd entry or a home folder, too few file descriptors. Each runs, or says one line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fault_helpers import assert_one_line, reserve, twctl, twctl_json
from tests.helpers import BIN

NOT_UTF8 = b"caf\xe9"
SHOWN = "caf\\xe9"  # how history and JSON show such bytes, as `ls -b` does
#: A user with no passwd entry, as in many containers.
STRANGER = ["setpriv", "--reuid=12345", "--regid=12345", "--clear-groups"]


def run_bytes(*argv: str | bytes | os.PathLike, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run with arguments given as bytes where they are, exactly as a shell would pass them."""
    return subprocess.run(
        [os.fsencode(arg) for arg in argv],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=60,
        **kwargs,
    )


def test_argv_that_is_not_utf8_runs_byte_for_byte(db_path: Path, tmp_path: Path) -> None:
    (tmp_path / os.fsdecode(NOT_UTF8 + b".txt")).touch()
    result = run_bytes(BIN / "twrun", "--db", db_path, "--", "ls", NOT_UTF8 + b".txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # ls found the file: the bytes were exact
    (record,) = twctl_json(db_path, "history")
    assert record["command"] == ["ls", f"{SHOWN}.txt"]
    assert record["outcome"] == "COMPLETED"


def test_a_name_that_is_not_utf8_is_kept_in_one_form(db_path: Path) -> None:
    result = run_bytes(BIN / "twrun", "--db", db_path, "--name", NOT_UTF8, "--", "true")
    assert result.returncode == 0, result.stderr
    assert [row["taskname"] for row in twctl_json(db_path, "history")] == [SHOWN]
    named = run_bytes(BIN / "twctl", "--db", db_path, "history", "--name", NOT_UTF8, "--json")
    assert [row["taskname"] for row in json.loads(named.stdout)] == [SHOWN]
    assert SHOWN in twctl(db_path, "history")


def test_a_feedback_folder_that_is_not_utf8_works(db_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / os.fsdecode(NOT_UTF8)
    folder.mkdir()
    taskid = reserve(db_path)
    writes = 'echo "[step]done" > "$TASKWATCHER_FEEDBACK"'
    result = run_bytes(
        BIN / "twrun", "--db", db_path, "--taskid", str(taskid), "--feedpath", folder,
        "--", "sh", "-c", writes,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = twctl_json(db_path, "history")
    assert record["feedback"] == {"step": "done"}


@pytest.fixture
def open_folder(tmp_path: Path) -> Path:
    """A database folder any user may write, reachable from outside pytest's private one."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"taskwatcher-legal-{os.getpid()}"
    folder.mkdir(mode=0o1777, exist_ok=True)
    folder.chmod(0o1777)
    yield folder
    subprocess.run(["rm", "-rf", folder])


def test_a_user_without_passwd_entry_or_home(open_folder: Path) -> None:
    db = open_folder / f"{os.getpid()}.db"
    env = {"PATH": os.environ["PATH"]}  # no HOME, no XDG_*: nothing to find a home folder by
    ran = subprocess.run(
        [*STRANGER, BIN / "twrun", "--db", db, "--", "true"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    default = subprocess.run(
        [*STRANGER, BIN / "twctl", "list"], capture_output=True, text=True, env=env, timeout=60
    )
    assert default.returncode == 2
    assert "no home folder for the default database" in assert_one_line(default.stderr, "twctl: ")
    taskid = reserve(db)
    killed = subprocess.run(
        [*STRANGER, BIN / "twctl", "--db", db, "kill", str(taskid)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr
    cancelled, _ = twctl_json(db, "history")
    assert cancelled["killed_by"].startswith("uid 12345@")


@pytest.mark.parametrize(("reserved", "limit"), [(False, 9), (True, 9), (False, 16)])
def test_too_few_file_descriptors_is_one_line_before_anything(
    db_path: Path, tmp_path: Path, reserved: bool, limit: int
) -> None:
    """16 passed an older count that forgot the output pipes and the notify socket."""
    marker = tmp_path / "ran"
    taskid = ["--taskid", str(reserve(db_path))] if reserved else []
    result = subprocess.run(
        ["prlimit", f"--nofile={limit}", BIN / "twrun", "--db", db_path, *taskid,
         "--", "touch", marker],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 125
    assert "too few file descriptors" in assert_one_line(result.stderr, "twrun: ")
    assert not marker.exists()
    assert twctl_json(db_path, "history") == []
    assert [row["status"] for row in twctl_json(db_path, "list")] == ["RESERVED"] * reserved


def test_the_descriptors_twrun_asks_for_are_enough_for_a_teed_task(db_path: Path) -> None:
    """At the limit the check allows, a task with captured output and a timeout runs."""
    result = subprocess.run(
        ["prlimit", "--nofile=30", BIN / "twrun", "--db", db_path, "--timeout", "5",
         "--", "sh", "-c", "echo out; echo err >&2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")


def test_a_database_path_that_is_not_utf8_prints_escaped(tmp_path: Path) -> None:
    """Printed under a strict UTF-8 locale, such a path would raise: it shows as ls -b does."""
    db = tmp_path / os.fsdecode(NOT_UTF8 + b".db")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    initialized = run_bytes(BIN / "twctl", "--db", db, "init", env=env)
    assert initialized.returncode == 0, initialized.stderr
    assert initialized.stdout == f"initialized {tmp_path}/{SHOWN}.db\n"
    watched = run_bytes(BIN / "twctl", "--db", db, "watch", "--once", env=env)
    assert watched.returncode == 0 and watched.stderr == ""  # its title holds the path


@pytest.mark.parametrize("command", [["twctl", "list"], ["twctl", "reserve"], ["twparse", "-"]])
def test_an_unwritable_or_closed_stdout_is_one_line(db_path: Path, command: list[str]) -> None:
    twctl(db_path, "init")
    argv = [BIN / command[0], *(["--db", db_path] if command[0] == "twctl" else []), *command[1:]]
    with open("/dev/full", "w") as full:
        written = subprocess.run(argv, stdout=full, stderr=subprocess.PIPE, text=True, input="")
    assert written.returncode == 1
    assert "cannot write the output: No space left on device" in assert_one_line(
        written.stderr, f"{command[0]}: "
    )
    live_before = len(twctl_json(db_path, "list"))
    closed = subprocess.run(
        ["sh", "-c", '"$@" >&-', "sh", *map(str, argv)], capture_output=True, text=True
    )
    assert closed.returncode == 2
    assert assert_one_line(closed.stderr, f"{command[0]}: ").endswith("standard output is closed")
    assert len(twctl_json(db_path, "list")) == live_before  # refused before doing anything
