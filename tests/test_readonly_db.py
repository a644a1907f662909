"""Commands that only read never create a database, and read one that cannot be written.

A --db (or $TASKWATCHER_DB) naming nothing is a typo: one line, exit 2, nothing created. The
default location before its first use reads as empty. A database on a read-only file
system, on a full disk, or in a folder or file its user cannot write, is read as it is,
without housekeeping, with one warning; what cannot be read that way (an older schema, a
journal left by a crashed writer) is one line and exit 2, the files left as they were.
Read-only file systems and full disks are small tmpfs mounts of the test's own (root only).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from taskwatcher.engine.schema import LATEST_VERSION, MIGRATIONS
from tests.helpers import BIN, run_cli

READS = [
    ["list"],
    ["history"],
    ["feedback", "1"],
    ["show", "1"],
    ["log", "1"],
    ["follow", "1"],
    ["wait", "1"],
    ["watch", "--once"],
]
#: Commands that change a database, which must be there: nothing to clear, kill or update.
CHANGES = [["clear"], ["kill", "1"], ["killall", "nightly"], ["update"]]
#: Far below any task's age: were housekeeping to run, every reservation would expire.
EXPIRE_AT_ONCE = {**os.environ, "TASKWATCHER_RESERVATION_TTL": "0.001"}


def typed(value: object) -> str | None:
    """A test id: the command as typed (pytest's own for the other parameters)."""
    return " ".join(value) if isinstance(value, list) else None


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content: what a command must leave as it was."""
    return {str(path): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def read_only_warning(db: Path, reason: str) -> str:
    return f"twctl: warning: {db} is read-only here ({reason}): housekeeping skipped\n"


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a command that failed with exit 2."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


@pytest.mark.parametrize("command", READS + CHANGES, ids=" ".join)
def test_a_named_database_that_is_missing_is_a_usage_error_and_nothing_is_created(
    tmp_path: Path, command: list[str]
) -> None:
    db = tmp_path / "no" / "such" / "tasks.db"
    result = run_cli("twctl", "--db", db, *command)
    assert usage_error(result) == f"twctl: no taskwatcher database at {db}"
    assert list(tmp_path.iterdir()) == []


def test_a_typo_in_the_environment_creates_nothing_either(tmp_path: Path) -> None:
    result = run_cli("twctl", "history", cwd=tmp_path, env={**os.environ, "TASKWATCHER_DB": "t.db"})
    assert usage_error(result) == f"twctl: no taskwatcher database at {tmp_path / 't.db'}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "code", "output"),
    [
        (["list"], 0, "No tasks.\n"),
        (["history", "--json"], 0, "[]\n"),
        (["update"], 0, "0 task(s) archived, 0 live\n"),
        (["clear"], 0, "0 history row(s) removed\n"),
        (["kill", "1"], 1, ""),
        (["wait", "1"], 1, ""),
    ],
    ids=typed,
)
def test_the_default_database_before_its_first_use_reads_as_empty(
    isolated_state: Path, command: list[str], code: int, output: str
) -> None:
    result = run_cli("twctl", *command)
    assert (result.returncode, result.stdout) == (code, output), result.stderr
    assert not isolated_state.exists()


@pytest.mark.parametrize(
    "command", [["twctl", "reserve"], ["twctl", "init"], ["twrun", "--", "true"]], ids=" ".join
)
def test_writers_create_the_database_and_its_folders(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "new" / "tasks.db"
    result = run_cli(command[0], "--db", db, *command[1:])
    assert result.returncode == 0, result.stderr
    assert db.is_file() and (db.parent.stat().st_mode & 0o777) == 0o700


def test_paths_with_uri_characters_and_bytes_not_utf8_name_their_own_file(
    tmp_path: Path,
) -> None:
    """Readers open by URI, where `?` starts a query, `#` a fragment and `%` an escape."""
    folder = tmp_path / os.fsdecode(b"odd \xff%41")
    db = folder / "a?mode=rwc#b%3F.db"
    assert run_cli("twctl", "--db", db, "reserve", "--name", "odd").returncode == 0
    listed = run_cli("twctl", "--db", db, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [task["name"] for task in json.loads(listed.stdout)] == ["odd"]
    # Read as a URI unescaped, the name would have made a database "a" (mode=rwc).
    assert sorted(path.name for path in folder.iterdir()) == [db.name, f"{db.name}-journal"]


class Tmpfs:
    """A small file system of the test's own, to make read-only or full."""

    def __init__(self, point: Path) -> None:
        self.point = point

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", self.point], check=True)

    def fill(self) -> None:
        """Write a file until no block is left."""
        descriptor = os.open(self.point / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(descriptor, bytes(4096))
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(descriptor)
        assert os.statvfs(self.point).f_bavail == 0


@contextmanager
def mounted(point: Path) -> Iterator[Tmpfs]:
    """A tmpfs mounted on `point` while in the block; skips the test where only root could."""
    point.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", point]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield Tmpfs(point)
    finally:
        subprocess.run(["umount", point], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    with mounted(tmp_path / "mnt") as mount:
        yield mount


def twctl(db: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return run_cli("twctl", "--db", db, *args, env=EXPIRE_AT_ONCE, **kwargs)


#: A task that prints a line and writes feedback, for the readers to find.
TASK = ["sh", "-c", 'echo done here; echo "[step]3" > "$TASKWATCHER_FEEDBACK"']


@pytest.fixture(scope="module")
def read_only_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A database on a read-only file system: task 1 ended, task 2 is a reservation older
    than any reservation TTL the readers are given (`EXPIRE_AT_ONCE`)."""
    with mounted(tmp_path_factory.mktemp("ro") / "mnt") as tmpfs:
        db = tmpfs.point / "tasks.db"
        ran = run_cli("twrun", "--db", db, "--name", "nightly", "--", *TASK)
        assert ran.returncode == 0, ran.stderr
        assert run_cli("twctl", "--db", db, "reserve", "--name", "waiting").returncode == 0
        Path(f"{db}-journal").unlink()  # so that a journal made by a reader would show
        before = tree(tmpfs.point)
        tmpfs.remount("ro")
        yield db
        assert tree(tmpfs.point) == before


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["list", "--json"], '"name":"waiting"'),
        (["history", "--json"], '"outcome":"COMPLETED"'),
        (["feedback", "1"], '{"step":"3"}'),
        (["show", "2", "--json"], '"status": "RESERVED"'),
        (["log", "1"], "done here"),
        (["follow", "1"], "done here"),
        (["wait", "1"], "1 COMPLETED 0"),
        (["watch", "--once"], "waiting"),
    ],
    ids=typed,
)
def test_readers_read_a_read_only_file_system_as_it_is_with_one_warning(
    read_only_db: Path, command: list[str], shown: str
) -> None:
    """The stale reservation stays: housekeeping, which would expire it, is skipped."""
    result = twctl(read_only_db, *command)
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout
    assert result.stderr == read_only_warning(read_only_db, "read-only file system")


@pytest.mark.parametrize("command", [["reserve"], *CHANGES], ids=" ".join)
def test_writers_on_a_read_only_file_system_fail_in_one_line(
    read_only_db: Path, command: list[str]
) -> None:
    assert usage_error(twctl(read_only_db, *command)).endswith("database folder is not writable")


def test_readers_on_a_full_disk_read_and_write_nothing(tmpfs: Tmpfs) -> None:
    db = tmpfs.point / "tasks.db"
    assert run_cli("twctl", "--db", db, "reserve", "--name", "waiting").returncode == 0
    journal = Path(f"{db}-journal")
    journal.unlink()
    tmpfs.fill()
    before = db.read_bytes()
    listed = twctl(db, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [task["name"] for task in json.loads(listed.stdout)] == ["waiting"]
    assert listed.stderr == read_only_warning(db, "no space left on the device")
    assert not journal.exists()
    refused = usage_error(twctl(db, "reserve"))
    assert refused == f"twctl: {db}: database or disk is full"
    assert db.read_bytes() == before


@pytest.mark.parametrize(
    ("folder_mode", "file_mode", "reason"),
    [(0o500, 0o600, "its folder is not writable"), (0o700, 0o400, "the file is not writable")],
    ids=["folder", "file"],
)
def test_readers_read_what_their_user_may_not_write(
    tmp_path: Path, unprivileged: list[str], folder_mode: int, file_mode: int, reason: str
) -> None:
    folder = tmp_path / "shared"
    db = folder / "tasks.db"
    assert run_cli("twctl", "--db", db, "reserve", "--name", "waiting").returncode == 0
    Path(f"{db}-journal").unlink()
    db.chmod(file_mode)
    folder.chmod(folder_mode)
    before = tree(folder)
    try:
        argv = [*unprivileged, BIN / "twctl", "--db", db, "list", "--json"]
        result = subprocess.run(argv, capture_output=True, text=True, env=EXPIRE_AT_ONCE)
    finally:
        folder.chmod(0o700)
    assert result.returncode == 0, result.stderr
    assert [task["name"] for task in json.loads(result.stdout)] == ["waiting"]
    assert result.stderr == read_only_warning(db, reason)
    assert tree(folder) == before


#: A writer that dies inside its transaction, as a crash or a power cut leaves one: its
#: changes already in the file (its cache is one page), the pages they replaced in the
#: -journal, which the next writer must roll back.
CRASHING_WRITER = """
import os, sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("PRAGMA cache_size = 1")
connection.execute("BEGIN IMMEDIATE")
for _ in range(20):
    connection.execute(
        "INSERT INTO tasks (name, info1, reservetime, lastupdate) VALUES ('half', ?, 0, 0)",
        ("x" * 3000,),
    )
os._exit(0)
"""


def test_a_journal_left_by_a_crash_is_one_line_until_it_can_be_rolled_back(
    tmpfs: Tmpfs,
) -> None:
    db = tmpfs.point / "tasks.db"
    assert run_cli("twctl", "--db", db, "reserve", "--name", "kept").returncode == 0
    subprocess.run([sys.executable, "-c", CRASHING_WRITER, db], check=True)
    assert Path(f"{db}-journal").stat().st_size > 0
    before = tree(tmpfs.point)
    tmpfs.remount("ro")
    refused = usage_error(twctl(db, "list"))
    assert refused == (
        f"twctl: {db}: cannot use the database (a change was interrupted, and its -journal"
        " can be rolled back only where the database can be written)"
    )
    assert tree(tmpfs.point) == before
    tmpfs.remount("rw")
    listed = run_cli("twctl", "--db", db, "list", "--json")
    assert [task["name"] for task in json.loads(listed.stdout)] == ["kept"], listed.stderr


def test_an_older_schema_is_one_line_where_it_cannot_be_upgraded(tmpfs: Tmpfs) -> None:
    db = tmpfs.point / "tasks.db"
    with closing(sqlite3.connect(db, isolation_level=None)) as first_release:
        for statement in MIGRATIONS[0].sqlite:
            first_release.execute(statement)
        first_release.execute("PRAGMA user_version = 1")
    before = tree(tmpfs.point)
    tmpfs.remount("ro")
    refused = usage_error(twctl(db, "history"))
    assert refused == (
        f"twctl: {db}: schema version 1, older than this taskwatcher's ({LATEST_VERSION}),"
        " cannot be upgraded here (read-only): run twctl update on it where it can be written"
    )
    assert tree(tmpfs.point) == before
    tmpfs.remount("rw")
    assert twctl(db, "update").returncode == 0
    with closing(sqlite3.connect(db)) as upgraded:
        assert upgraded.execute("PRAGMA user_version").fetchone() == (LATEST_VERSION,)
