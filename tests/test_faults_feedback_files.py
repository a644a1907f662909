"""Hostile feedback files through the real commands: no hang, no traceback, bounded memory.

The file a task reports in is written by the task, so it can hold anything, be swapped for a
FIFO, a device or a symbolic link, shrink, vanish. Its one reader is the supervisor, which
publishes the values for `twctl feedback`, `show` and `watch`; it and `twparse` must come
through: values where there are some, a warning on stderr where something had to be skipped
(`twrun: warning: ...`), exit 2 and one line from twparse for what is not a file at all.
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
from typing import NamedTuple

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
#: What the supervisor says, once, of something that is not a regular file in the file's place.
NOT_A_FILE = {
    "symlink to /dev/zero": "a symbolic link, not read",
    "FIFO": "not a regular file",
}


class HostileTask(NamedTuple):
    db: Path
    taskid: int
    path: Path
    supervisor_stderr: Path


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileTask]:
    """A running task whose feedback file the tests swap at will; its supervisor's stderr."""
    folder = tmp_path_factory.mktemp("hostile")
    db = folder / "tasks.db"
    taskid = reserve(db, "--name", "hostile")
    stderr = folder / "twrun.stderr"
    with stderr.open("w") as errors:
        runner = twrun(
            db, taskid, "--feedpath", folder, "--timeout", "600", "--grace", "1",
            command=["sleep", "600"], stderr=errors,
        )  # fmt: skip
    wait_running(db, taskid)
    yield HostileTask(db, taskid, folder / f"feedback_{taskid}.log", stderr)
    runner.send_signal(signal.SIGTERM)
    runner.communicate(timeout=20)


def feedback(db: Path, taskid: int) -> dict[str, str]:
    """`twctl feedback`: the values the supervisor published; it never warns, it reads no file."""
    result = run_cli("twctl", "--db", db, "feedback", str(taskid), timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    values = json.loads(result.stdout)
    assert all(isinstance(v, str) for v in values.values())
    return values


def published(db: Path, taskid: int, expected: dict[str, str]) -> None:
    """Wait until the supervisor has published `expected` (it looks once a second)."""
    wait_for(lambda: feedback(db, taskid) == expected)


def supervisor_warnings(task: HostileTask) -> list[str]:
    lines = task.supervisor_stderr.read_text().splitlines()
    assert all(line.startswith("twrun: warning: ") for line in lines), lines
    return lines


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_file_through_every_reader(task: HostileTask, kind: str) -> None:
    replace_with(task.path, lambda new: new.write_text("[before]1\n"))
    published(task.db, task.taskid, {"before": "1"})
    replace_with(task.path, HOSTILE[kind])
    parsed = run_cli("twparse", task.path, timeout=60)
    checked = run_cli("twparse", "--check", task.path, timeout=60)
    if kind in NOT_A_FILE:
        warning = f"twrun: warning: {task.path}: {NOT_A_FILE[kind]}"
        wait_for(lambda: warning in supervisor_warnings(task))
        assert feedback(task.db, task.taskid) == {"before": "1"}  # the last values read stay
        assert "hostile" in twctl(task.db, "watch", "--once", timeout=60)
        for result in (parsed, checked):
            assert result.returncode == 2
            assert assert_one_line(result.stderr, "twparse: ").endswith("not a regular file")
        return
    assert parsed.returncode == 0
    values = json.loads(parsed.stdout)
    wait_for(lambda: feedback(task.db, task.taskid) == values)
    assert "hostile" in twctl(task.db, "watch", "--once", timeout=60)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert all(line.startswith(f"{task.path}:") for line in checked.stdout.splitlines())
    if kind == "invalid UTF-8":
        assert values == {"a": "ok", "d": "fine"}
        assert [line.split(":")[1] for line in checked.stdout.splitlines()] == ["2", "3"]
    if kind == "NUL bytes":
        assert values["b"] == "ok"
        assert checked.stdout.startswith(f"{task.path}:2:1: ")


def test_50_mb_line_is_skipped_in_bounded_memory(task: HostileTask) -> None:
    """Each reader holds at most one chunk and 64 KiB of a line: the peak may not follow it.

    twparse reads the whole file. The supervisor follows it as it grows: within 16 MiB of
    the end it reads it all, further behind only its last 16 MiB.
    """
    readers = {
        "twparse": [BIN / "twparse", task.path],
        "twparse --check": [BIN / "twparse", "--check", task.path],
    }
    replace_with(task.path, lambda new: new.write_text("[a]before\n[b]after\n"))
    baseline = {name: measured(argv)[1] for name, argv in readers.items()}
    huge = f"{WRITE_HUGE_LINE} > {task.path}"
    said_before = len(supervisor_warnings(task))
    replace_with(task.path, lambda new: subprocess.run(["sh", "-c", huge], check=True))
    assert task.path.stat().st_size > HUGE_LINE
    for name, argv in readers.items():
        result, peak = measured(argv)
        assert peak - baseline[name] < HUGE_LINE / MB / 2, f"{name}: {peak:.0f} MB"
        assert "Traceback" not in result.stderr
        assert TOO_LONG in result.stderr + result.stdout
        if name != "twparse --check":
            assert json.loads(result.stdout) == {"a": "before", "b": "after"}

    def supervisor_read_it() -> bool:
        said = "\n".join(supervisor_warnings(task)[said_before:])
        return TOO_LONG in said or SKIPPED_PAST_THE_BUDGET in said

    wait_for(supervisor_read_it)
    wait_for(
        lambda: feedback(task.db, task.taskid) in ({"a": "before", "b": "after"}, {"b": "after"})
    )


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
    assert TOO_LONG in result.stderr or SKIPPED_PAST_THE_BUDGET in result.stderr
    huge, small = twctl_json(db_path, "history")
    assert small["feedback"] == {"a": "before", "b": "after"}
    # What was read before a skip is kept: `a` only if a look came before the long line.
    assert huge["feedback"] in ({"b": "after"}, {"a": "before", "b": "after"})
    if SKIPPED_PAST_THE_BUDGET in result.stderr:  # the final read had to skip
        assert SKIPPED_PAST_THE_BUDGET in huge["termerror"]
    else:  # it followed the file as it grew
        assert huge["feedback"] == {"a": "before", "b": "after"}


def sparse_terabyte(path: Path) -> None:
    """A value, a terabyte of holes (NUL bytes, one over-long line), a last value."""
    path.write_text("[a]1\n")
    os.truncate(path, TiB)
    with open(path, "a") as file:
        file.write("\n[b]2\n")


def test_sparse_terabyte_through_the_supervisor(task: HostileTask) -> None:
    """The supervisor reads the last 16 MiB and says what it skipped; twparse would read
    it all (it checks what its user names), so it is not run on it."""
    replace_with(task.path, sparse_terabyte)
    published(task.db, task.taskid, {"b": "2"})
    warning = f"twrun: warning: {task.path}: skipped 1.0 TiB {SKIPPED_PAST_THE_BUDGET}"
    assert warning in supervisor_warnings(task)


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
    # `a` stays when the supervisor's first look came before the holes were added.
    assert record["feedback"] in ({"b": "2"}, {"a": "1", "b": "2"})
    assert SKIPPED_PAST_THE_BUDGET in record["termerror"]


def test_a_skip_during_the_run_is_in_history_though_the_final_read_is_whole(
    db_path: Path, tmp_path: Path
) -> None:
    """The supervisor's look skips the hole while the task sleeps; the final read then has
    only the last line to read, and history must still say keys may be lost."""
    writes = 'truncate -s 1T "$F"; sleep 2; printf "\\n[b]2\\n" >> "$F"'
    result = run_cli(
        "twrun", "--db", db_path, "--feedpath", tmp_path,
        "--", "sh", "-c", f'F="$TASKWATCHER_FEEDBACK"; {writes}', timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = twctl_json(db_path, "history")
    assert record["feedback"] == {"b": "2"}
    assert record["termerror"].startswith("final feedback incomplete: skipped 1.0 TiB")
    assert record["termerror"].endswith(SKIPPED_PAST_THE_BUDGET)


def test_truncated_rewritten_and_replaced_between_two_reads(task: HostileTask) -> None:
    db, taskid, path = task.db, task.taskid, task.path
    replace_with(path, lambda new: new.write_text("[a]1\n[b]2\n"))
    published(db, taskid, {"a": "1", "b": "2"})
    with open(path, "r+") as same_file:  # shrunk in place: read again from the start
        same_file.truncate(0)
        same_file.write("[c]3\n")
    published(db, taskid, {"c": "3"})
    path.write_text("[c]4\n")  # rewritten in place to the same size
    published(db, taskid, {"c": "4"})
    replacement = path.with_name("replacement")
    replacement.write_text("[d]5\n")
    os.replace(replacement, path)
    published(db, taskid, {"d": "5"})
    with open(path, "a") as same_file:
        same_file.write("[e]6\n")
    published(db, taskid, {"d": "5", "e": "6"})


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


def test_file_churning_while_being_read(task: HostileTask, tmp_path: Path) -> None:
    db, taskid, path = task.db, task.taskid, task.path
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
    published(db_path, taskid, {"step": "last good"})
    replace_with(path, HOSTILE[kind])
    assert "KILLED" in twctl(db_path, "kill", str(taskid), "--wait", "20")
    _, stderr = runner.communicate(timeout=20)
    assert stderr.splitlines() == [f"twrun: warning: {path}: {NOT_A_FILE[kind]}"]
    (record,) = twctl_json(db_path, "history")
    assert record["feedback"] == {"step": "last good"}
    assert not path.is_symlink() and not path.exists()
