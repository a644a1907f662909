"""Hostile feedback files through the real commands: no hang, no traceback, bounded memory.

The file a task reports in is written by the task, so it can hold anything, be swapped for a
FIFO or a device, shrink, vanish. `twctl feedback` (and `show`, which reads the same way),
`watch --once`, `twparse` and twrun's own final read must all come through: values where
there are some, a warning on stderr where something had to be skipped (`twctl: warning:
...`), exit 2 and one line from twparse for what is not a file at all.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fault_helpers import (
    PY,
    assert_one_line,
    measured,
    reserve,
    twctl,
    twctl_json,
    twrun,
    wait_running,
)
from tests.helpers import BIN, run_cli, wait_for

MB = 1024 * 1024
HUGE_LINE = 50 * MB
TiB = 1024**4
TOO_LONG = "line longer than 65536 bytes: skipped"
#: What a reader further behind than its 16 MiB budget says, after the size it skipped.
SKIPPED_PAST_THE_BUDGET = "(more than 16 MiB behind); keys set only there are lost"
#: A shell command that writes one 50 MB line between two good ones to standard output.
WRITE_HUGE_LINE = (
    f"{{ printf '[a]before\\n[big]'; head -c {HUGE_LINE} /dev/zero | tr '\\0' x;"
    " printf '\\n[b]after\\n'; }"
)


def replace_with(path: Path, make: Callable[[Path], object]) -> None:
    """Put something new where the feedback file is (a new inode, as a rewriting task would)."""
    if path.is_symlink() or path.exists():
        path.unlink()
    make(path)


HOSTILE: dict[str, Callable[[Path], object]] = {
    "binary garbage": lambda path: path.write_bytes(random.Random(6).randbytes(MB)),
    "invalid UTF-8": lambda path: path.write_bytes(b"[a]ok\n[b]\xff\xfe\n[c]\xc3\x28\n[d]fine\n"),
    "NUL bytes": lambda path: path.write_bytes(b"[a]x\x00y\n\x00\x00\x00\n[b]ok\n"),
    "symlink to /dev/zero": lambda path: path.symlink_to("/dev/zero"),
    "FIFO": os.mkfifo,
}
NOT_A_FILE = {"symlink to /dev/zero", "FIFO"}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, Path]]:
    """A running task whose feedback file the tests swap at will: (db, taskid, file)."""
    folder = tmp_path_factory.mktemp("hostile")
    db = folder / "tasks.db"
    taskid = reserve(db, "--name", "hostile")
    runner = twrun(
        db, taskid, "--feedpath", folder, "--timeout", "600", "--grace", "1",
        command=["sleep", "600"],
    )  # fmt: skip
    wait_running(db, taskid)
    yield db, taskid, folder / f"feedback_{taskid}.log"
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=20)


def feedback(db: Path, taskid: int) -> tuple[dict[str, str], list[str]]:
    """`twctl feedback`: its values, and its warnings, which must be all it says on stderr."""
    result = run_cli("twctl", "--db", db, "feedback", str(taskid), timeout=60)
    assert result.returncode == 0, result.stderr
    warnings = result.stderr.splitlines()
    assert all(line.startswith("twctl: warning: ") for line in warnings), result.stderr
    values = json.loads(result.stdout)
    assert all(isinstance(v, str) for v in values.values())
    return values, warnings


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_file_through_every_reader(task: tuple[Path, int, Path], kind: str) -> None:
    db, taskid, path = task
    replace_with(path, HOSTILE[kind])
    values, warnings = feedback(db, taskid)
    if kind in NOT_A_FILE:
        assert warnings == [f"twctl: warning: {path}: not a regular file"]
    assert "hostile" in twctl(db, "watch", "--once", timeout=60)
    parsed = run_cli("twparse", path, timeout=60)
    checked = run_cli("twparse", "--check", path, timeout=60)
    if kind in NOT_A_FILE:
        for result in (parsed, checked):
            assert result.returncode == 2
            assert assert_one_line(result.stderr, "twparse: ").endswith("not a regular file")
        return
    assert parsed.returncode == 0 and json.loads(parsed.stdout) == values
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert all(line.startswith(f"{path}:") for line in checked.stdout.splitlines())
    if kind == "invalid UTF-8":
        assert values == {"a": "ok", "d": "fine"}
        assert [line.split(":")[1] for line in checked.stdout.splitlines()] == ["2", "3"]
    if kind == "NUL bytes":
        assert values["b"] == "ok"
        assert checked.stdout.startswith(f"{path}:2:1: ")


def test_50_mb_line_is_skipped_in_bounded_memory(task: tuple[Path, int, Path]) -> None:
    """Each reader holds at most one chunk and 64 KiB of a line: the peak may not follow it.

    twparse reads the whole file; twctl, more than 16 MiB behind, only its last 16 MiB.
    """
    db, taskid, path = task
    readers = {
        "twctl feedback": [BIN / "twctl", "--db", db, "feedback", str(taskid)],
        "twparse": [BIN / "twparse", path],
        "twparse --check": [BIN / "twparse", "--check", path],
    }
    said = {
        "twctl feedback": (SKIPPED_PAST_THE_BUDGET, {"b": "after"}),
        "twparse": (TOO_LONG, {"a": "before", "b": "after"}),
        "twparse --check": (TOO_LONG, None),
    }
    replace_with(path, lambda new: new.write_text("[a]before\n[b]after\n"))
    baseline = {name: measured(argv)[1] for name, argv in readers.items()}
    replace_with(path, lambda new: subprocess.run(["sh", "-c", f"{WRITE_HUGE_LINE} > {new}"]))
    assert path.stat().st_size > HUGE_LINE
    for name, argv in readers.items():
        result, peak = measured(argv)
        assert peak - baseline[name] < HUGE_LINE / MB / 2, f"{name}: {peak:.0f} MB"
        assert "Traceback" not in result.stderr
        message, values = said[name]
        assert message in result.stderr + result.stdout
        if values is not None:
            assert json.loads(result.stdout) == values


def test_50_mb_line_at_the_end_of_a_task(db_path: Path, tmp_path: Path) -> None:
    """twrun's own last read of the file is bounded the same way (its last 16 MiB), and the
    values reach history."""
    peaks = []
    for writes in ("printf '[a]before\\n[b]after\\n'", WRITE_HUGE_LINE):
        taskid = reserve(db_path)
        argv = [
            BIN / "twrun", "--db", db_path, "--taskid", str(taskid), "--feedpath", tmp_path,
            "--", "sh", "-c", f'{writes} > "$TASKWATCHER_FEEDBACK"',
        ]  # fmt: skip
        result, peak = measured(argv)
        assert result.returncode == 0, result.stderr
        peaks.append(peak)
    assert peaks[1] - peaks[0] < HUGE_LINE / MB / 2
    assert SKIPPED_PAST_THE_BUDGET in result.stderr
    finals = [record["feedback"] for record in twctl_json(db_path, "history")]
    assert finals == [{"b": "after"}, {"a": "before", "b": "after"}]


def sparse_terabyte(path: Path) -> None:
    """A value, a terabyte of holes (NUL bytes, one over-long line), a last value."""
    path.write_text("[a]1\n")
    os.truncate(path, TiB)
    with open(path, "a") as file:
        file.write("\n[b]2\n")


def test_sparse_terabyte_through_twctl(task: tuple[Path, int, Path]) -> None:
    """`twctl feedback` reads the last 16 MiB and says what it skipped; twparse would read
    it all (it checks what its user names), so it is not run on it."""
    db, taskid, path = task
    replace_with(path, sparse_terabyte)
    values, warnings = feedback(db, taskid)
    assert values == {"b": "2"}
    assert warnings == [f"twctl: warning: {path}: skipped 1.0 TiB {SKIPPED_PAST_THE_BUDGET}"]


def test_sparse_terabyte_at_the_end_of_a_task(db_path: Path, tmp_path: Path) -> None:
    """`truncate -s 1T "$TASKWATCHER_FEEDBACK"` no longer holds up twrun's final read."""
    taskid = reserve(db_path)
    writes = 'printf "[a]1\\n" > "$F"; truncate -s 1T "$F"; printf "\\n[b]2\\n" >> "$F"'
    result = run_cli(
        "twrun", "--db", db_path, "--taskid", str(taskid), "--feedpath", tmp_path,
        "--", "sh", "-c", f'F="$TASKWATCHER_FEEDBACK"; {writes}', timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert SKIPPED_PAST_THE_BUDGET in result.stderr
    (record,) = twctl_json(db_path, "history")
    assert record["feedback"] == {"b": "2"}


def test_truncated_rewritten_and_replaced_between_two_reads(task: tuple[Path, int, Path]) -> None:
    db, taskid, path = task
    replace_with(path, lambda new: new.write_text("[a]1\n[b]2\n"))
    assert feedback(db, taskid) == ({"a": "1", "b": "2"}, [])
    with open(path, "r+") as same_file:  # shrunk in place: read again from the start
        same_file.truncate(0)
        same_file.write("[c]3\n")
    assert feedback(db, taskid) == ({"c": "3"}, [])
    path.write_text("[c]4\n")  # rewritten in place to the same size
    assert feedback(db, taskid) == ({"c": "4"}, [])
    replacement = path.with_name("replacement")
    replacement.write_text("[d]5\n")
    os.replace(replacement, path)
    assert feedback(db, taskid) == ({"d": "5"}, [])
    with open(path, "a") as same_file:
        same_file.write("[e]6\n")
    assert feedback(db, taskid) == ({"d": "5", "e": "6"}, [])


#: Rewrites the file as fast as it can: shrinks, grows, replaces, appends, until killed.
CHURN = textwrap.dedent("""
    import os, random, sys
    path = sys.argv[1]
    rng = random.Random(6)
    while True:
        count = rng.randrange(20000)
        lines = b"".join(b"[k%d]%d\\n" % (rng.randrange(50), i % 9) for i in range(count))
        how = rng.randrange(3)
        if how == 0:
            with open(path, "r+b") as f:
                f.truncate(rng.randrange(1000))
                f.seek(0, 2)
                f.write(lines)
        elif how == 1:
            with open(path + ".new", "wb") as f:
                f.write(lines)
            os.replace(path + ".new", path)
        else:
            with open(path, "ab") as f:
                f.write(lines[: rng.randrange(len(lines) + 1)])
""")


def test_file_churning_while_being_read(task: tuple[Path, int, Path], tmp_path: Path) -> None:
    db, taskid, path = task
    replace_with(path, lambda new: new.write_text("[start]1\n"))
    churn = tmp_path / "churn.py"
    churn.write_text(CHURN)
    writer = subprocess.Popen([PY, churn, path])
    try:
        for _ in range(4):
            feedback(db, taskid)
            parsed = run_cli("twparse", path, timeout=60)
            assert parsed.returncode == 0, parsed.stderr
            assert isinstance(json.loads(parsed.stdout), dict)
        assert writer.poll() is None  # the file really changed all along
    finally:
        writer.kill()
        writer.wait()


def test_deleted_feedback_file_is_no_heartbeat(db_path: Path, tmp_path: Path) -> None:
    """The task goes on writing, but into a file nobody can find any more: it times out."""
    ready = tmp_path / "ready"
    writes_forever = textwrap.dedent(f"""
        import os, pathlib, time
        with open(os.environ["TASKWATCHER_FEEDBACK"], "a", buffering=1) as feedback:
            feedback.write("[step]0\\n")
            pathlib.Path({str(ready)!r}).touch()
            for step in range(1, 600):
                time.sleep(0.1)
                feedback.write(f"[step]{{step}}\\n")
    """)
    taskid = reserve(db_path)
    runner = twrun(
        db_path, taskid, "--feedpath", tmp_path, "--timeout", "1", "--grace", "1",
        command=[PY, "-c", writes_forever],
    )  # fmt: skip
    wait_for(ready.exists)
    (tmp_path / f"feedback_{taskid}.log").unlink()
    assert runner.wait(timeout=20) == 124
    (record,) = twctl_json(db_path, "history")
    assert record["outcome"] == "TIMEOUT"


@pytest.mark.parametrize("kind", sorted(NOT_A_FILE))
def test_task_ending_with_a_non_file_in_place(db_path: Path, tmp_path: Path, kind: str) -> None:
    """twrun's last read refuses it with a warning; history keeps the last values read."""
    taskid = reserve(db_path, "--name", "swapped")
    runner = twrun(db_path, taskid, "--feedpath", tmp_path, command=["sleep", "600"])
    wait_running(db_path, taskid)
    path = tmp_path / f"feedback_{taskid}.log"
    path.write_text("[step]last good\n")
    assert feedback(db_path, taskid)[0] == {"step": "last good"}
    replace_with(path, HOSTILE[kind])
    assert "KILLED" in twctl(db_path, "kill", str(taskid), "--wait", "20")
    _, stderr = runner.communicate(timeout=20)
    assert stderr.splitlines() == [f"twrun: warning: {path}: not a regular file"]
    (record,) = twctl_json(db_path, "history")
    assert record["feedback"] == {"step": "last good"}
    assert not path.is_symlink() and not path.exists()
