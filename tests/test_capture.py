"""Captured output: the log in order, tee/log/inherit, rotation, a flood, a broken reader."""

from __future__ import annotations

import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import BIN, run_cli
from tests.run_helpers import PY, history, script

#: A task that talks on both streams, with pauses so the order of arrival is unambiguous.
CHATTY = """\
import sys, time
for n in range(3):
    print(f"out {n}", flush=True)
    time.sleep(0.05)
    print(f"err {n}", file=sys.stderr, flush=True)
    time.sleep(0.05)
"""
#: Bytes of the flood test: far more than any buffer on the way.
FLOOD = 200_000_000
CHATTY_LOG = "".join(f"out {n}\nerr {n}\n" for n in range(3))


def logs_of(db: Path) -> Path:
    return db.parent / f"{db.stem}-logs"


def test_the_log_holds_both_streams_in_order_of_arrival_and_tee_keeps_them_apart(
    db_path: Path, tmp_path: Path
) -> None:
    chatty = script(tmp_path, "chatty.py", CHATTY)
    result = run_cli("twrun", "--db", db_path, "--", PY, chatty)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(f"out {n}\n" for n in range(3))
    assert result.stderr == "".join(f"err {n}\n" for n in range(3))
    logfile = logs_of(db_path) / "task_1.log"
    assert logfile.read_text() == CHATTY_LOG
    assert stat.S_IMODE(logfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(logs_of(db_path).stat().st_mode) == 0o700
    record = history(db_path, 1)
    assert record.logfile == str(logfile)
    assert record.output_tail == CHATTY_LOG.removesuffix("\n")


def test_output_log_keeps_the_exact_order_of_the_two_streams(db_path: Path) -> None:
    """Logged only, both streams share one pipe: no pause is needed for the order to hold."""
    streams = "(sys.stdout, sys.stderr)"
    writes = f"import sys\nfor n in range(200): print(n, file={streams}[n % 2], flush=True)"
    result = run_cli("twrun", "--db", db_path, "--output", "log", "--", PY, "-c", writes)
    assert result.returncode == 0, result.stderr
    logged = (logs_of(db_path) / "task_1.log").read_text()
    assert logged.split() == [str(n) for n in range(200)]


def test_output_log_captures_only_and_inherit_captures_nothing(
    db_path: Path, tmp_path: Path
) -> None:
    chatty = script(tmp_path, "chatty.py", CHATTY)
    logged = run_cli("twrun", "--db", db_path, "--output", "log", "--", PY, chatty)
    assert (logged.returncode, logged.stdout, logged.stderr) == (0, "", "")
    assert (logs_of(db_path) / "task_1.log").read_text() == CHATTY_LOG
    inherited = run_cli("twrun", "--db", db_path, "--output", "inherit", "--", PY, chatty)
    assert inherited.returncode == 0
    assert inherited.stdout.splitlines() == [f"out {n}" for n in range(3)]
    assert not (logs_of(db_path) / "task_2.log").exists()
    record = history(db_path, 2)
    assert (record.logfile, record.output_tail) == (None, None)


def test_a_log_past_its_limit_rotates_once_and_never_holds_more_than_twice_it(
    db_path: Path,
) -> None:
    lines = "".join(f"line {n:04d}\n" for n in range(500))  # 5,000 bytes
    writer = f"import sys; sys.stdout.write({lines!r})"
    result = run_cli(
        "twrun", "--db", db_path, "--output", "log", "--log-max-bytes", "1000",
        "--", PY, "-c", writer,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    current, older = logs_of(db_path) / "task_1.log", logs_of(db_path) / "task_1.log.1"
    assert len(current.read_bytes()) <= 1000 and len(older.read_bytes()) == 1000
    assert {path.name for path in logs_of(db_path).iterdir()} == {older.name, current.name}
    assert lines.endswith(older.read_text() + current.read_text())
    assert history(db_path, 1).output_tail.splitlines()[-1] == "line 0499"


def test_the_tail_in_history_is_the_last_20_lines_and_keeps_control_characters(
    db_path: Path,
) -> None:
    writer = "import sys\nfor n in range(100): print(f'\\x1b[1mline {n}\\x1b[0m')"
    result = run_cli("twrun", "--db", db_path, "--output", "log", "--", PY, "-c", writer)
    assert result.returncode == 0, result.stderr
    tail = history(db_path, 1).output_tail.split("\n")
    assert tail == [f"\x1b[1mline {n}\x1b[0m" for n in range(80, 100)]


def test_a_flood_of_output_is_kept_up_with_in_bounded_memory_and_deadlines_hold(
    db_path: Path,
) -> None:
    """200 MB as fast as the task can write, then silence: output is the heartbeat, so the
    task times out a second after the flood whatever the flood did to twrun."""
    flood = f"head -c {FLOOD} /dev/zero; sleep 60"
    twrun = subprocess.Popen(
        [BIN / "twrun", "--db", db_path, "--output", "log", "--log-max-bytes", "8M",
         "--heartbeat", "output", "--timeout", "1", "--grace", "1", "--", "sh", "-c", flood],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    peak_kib = 0
    while twrun.poll() is None:
        peak_kib = max(peak_kib, _peak_rss_kib(twrun.pid))
        time.sleep(0.05)
    assert twrun.returncode == 124, twrun.stderr.read()
    record = history(db_path, 1)
    assert (record.outcome, record.termerror) == ("TIMEOUT", "no heartbeat for 1 s")
    eight_mib = 8 * 1024 * 1024
    sizes = {path.name: path.stat().st_size for path in logs_of(db_path).iterdir()}
    assert sizes == {"task_1.log.1": eight_mib, "task_1.log": FLOOD % eight_mib}
    assert 0 < peak_kib < 100 * 1024, f"twrun peaked at {peak_kib} KiB"


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident size so far (VmHWM), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0
    )


def test_output_heartbeats_keep_a_printing_task_alive_and_silence_ends_it(db_path: Path) -> None:
    printing = "for n in 1 2 3 4 5 6 7 8 9 10; do echo $n; sleep 0.2; done"
    alive = run_cli(
        "twrun", "--db", db_path, "--heartbeat", "output", "--timeout", "1",
        "--output", "log", "--", "sh", "-c", printing,
    )  # fmt: skip
    assert alive.returncode == 0, alive.stderr
    assert history(db_path, 1).outcome == "COMPLETED"
    silent = run_cli(
        "twrun", "--db", db_path, "--heartbeat", "output", "--timeout", "1", "--",
        "sh", "-c", "echo once; sleep 60",
    )  # fmt: skip
    assert silent.returncode == 124
    assert history(db_path, 2).outcome == "TIMEOUT"


def test_max_runtime_ends_a_task_whatever_its_heartbeats(db_path: Path) -> None:
    beating = "while true; do echo tick; sleep 0.1; done"
    result = run_cli(
        "twrun", "--db", db_path, "--heartbeat", "output", "--timeout", "5",
        "--max-runtime", "1", "--output", "log", "--", "sh", "-c", beating,
    )  # fmt: skip
    assert result.returncode == 124
    record = history(db_path, 1)
    assert record.outcome == "TIMEOUT"
    assert record.termerror == "still running after its maximum runtime of 1 s"
    assert 1 <= record.duration < 10


def test_a_broken_reader_of_twrun_is_passed_on_to_the_task(db_path: Path) -> None:
    """`twrun -- yes | head -1`: yes gets SIGPIPE as it would without twrun."""
    pipeline = subprocess.run(
        ["bash", "-c", f'"{BIN}/twrun" --db "{db_path}" -- yes | head -1; '
         'echo "${PIPESTATUS[0]}"'],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert pipeline.stdout.splitlines() == ["y", "141"], pipeline.stderr
    record = history(db_path, 1)
    assert (record.outcome, record.termsignal) == ("KILLED", "SIGPIPE")
    log = (logs_of(db_path) / "task_1.log").read_text()
    assert log.endswith(
        "[twrun] twrun's stdout broke (its reader is gone): the task's stdout was closed\n"
    )


def test_output_heartbeat_needs_captured_output(db_path: Path) -> None:
    result = run_cli(
        "twrun", "--db", db_path, "--heartbeat", "output", "--output", "inherit", "--", "true"
    )
    assert result.returncode == 125
    assert result.stderr == (
        "twrun: output cannot be a heartbeat when the output is not captured\n"
    )
    assert not db_path.exists()


@pytest.mark.parametrize("words", [["--heartbeat", "pulse"], ["--log-max-bytes", "0"]])
def test_bad_capture_options_are_one_line_and_125(db_path: Path, words: list[str]) -> None:
    result = run_cli("twrun", "--db", db_path, *words, "--", "true")
    assert result.returncode == 125
    assert result.stderr.splitlines()[-1].startswith("twrun: ")
    assert "Traceback" not in result.stderr and not db_path.exists()


def test_a_logdir_another_user_could_redirect_is_refused(db_path: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = run_cli("twrun", "--db", db_path, "--logdir", shared, "--", "true")
    assert result.returncode == 125
    assert "writable by other users" in result.stderr
    assert list(shared.iterdir()) == []


def readme_task() -> str:
    """The complete `task.py` of the README, exactly as written there."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    intro = readme.index("**Reporting from Python:** a complete task, `task.py`:")
    start = readme.index("```python\n", intro) + len("```python\n")
    return readme[start : readme.index("```", start)]


def test_the_readme_python_example_runs_as_written_and_times_out_once_it_stops(
    db_path: Path, tmp_path: Path
) -> None:
    task = tmp_path / "task.py"
    task.write_text(readme_task())
    result = run_cli("twrun", "--db", db_path, "--timeout", "5", "--", PY, task)
    assert result.returncode == 0, result.stderr
    record = history(db_path, 1)
    assert record.outcome == "COMPLETED"
    assert record.feedback == {
        "testcase_name": "Setting up topology",
        "progress": "100",
        "report": '{"passed": 5, "failed": 0}',
    }
    stuck = tmp_path / "stuck.py"
    stuck.write_text(
        readme_task().replace("time.sleep(0.2)", "time.sleep(0.2 if step < 3 else 60)")
    )
    result = run_cli("twrun", "--db", db_path, "--timeout", "1", "--", PY, stuck)
    assert result.returncode == 124
    record = history(db_path, 2)
    assert (record.outcome, record.feedback["progress"]) == ("TIMEOUT", "40")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of its own (tmpfs), where only root may mount one."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small file system here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_log_leaves_the_database_room_to_record_the_end(small_disk: Path) -> None:
    """Beside the database on a small disk, a flood of output stops being logged before the
    disk is full: the task still runs, and its end is recorded."""
    db = small_disk / "tasks.db"
    flood = "head -c 6000000 /dev/zero; echo done >&2"
    result = run_cli("twrun", "--db", db, "--output", "log", "--", "sh", "-c", flood)
    assert result.returncode == 0, result.stderr
    assert "kept for the database" in result.stderr
    record = history(db, 1)
    assert record.outcome == "COMPLETED"
    assert record.termerror == "log incomplete: less than 0.4 MiB free, kept for the database"
    assert (small_disk / "tasks-logs" / "task_1.log").stat().st_size < 4 * 1024 * 1024


def test_output_while_a_timed_out_task_shuts_down_is_logged_and_the_end_recorded(
    db_path: Path,
) -> None:
    """Output read after the timeout is no heartbeat, and never stops the recording."""
    polite = 'trap "echo bye; exit 1" TERM; sleep 30 & wait'
    result = run_cli(
        "twrun", "--db", db_path, "--output", "log", "--timeout", "1", "--heartbeat", "output",
        "--", "sh", "-c", polite,
    )  # fmt: skip
    assert result.returncode == 124, result.stderr
    assert history(db_path, 1).outcome == "TIMEOUT"
    assert (logs_of(db_path) / "task_1.log").read_text() == "bye\n"


def test_a_task_that_writes_a_lot_as_it_stops_is_read_meanwhile_not_killed(
    db_path: Path, tmp_path: Path
) -> None:
    """3 MB written on SIGTERM fill any pipe: twrun reads during the grace period, so the
    task exits on its own (by SIGTERM's handler), not by SIGKILL after the grace."""
    dumper = script(
        tmp_path,
        "dumper.py",
        """\
        import signal, sys, time
        def dump(*_):
            sys.stdout.write("x" * 3_000_000 + "\\nclean-exit\\n")
            sys.stdout.flush()
            sys.exit(0)
        signal.signal(signal.SIGTERM, dump)
        time.sleep(60)
        """,
    )
    result = run_cli(
        "twrun", "--db", db_path, "--output", "log", "--max-runtime", "1", "--grace", "20",
        "--", PY, dumper,
    )  # fmt: skip
    assert result.returncode == 124
    record = history(db_path, 1)
    assert (record.outcome, record.termsignal) == ("TIMEOUT", "SIGTERM")
    assert record.duration < 15
    assert (logs_of(db_path) / "task_1.log").read_text().endswith("\nclean-exit\n")


def test_a_failing_copy_to_twrun_stdout_stops_the_copy_not_the_task(db_path: Path) -> None:
    """/dev/full is twrun's trouble, not the task's: only a reader gone (EPIPE) is passed on."""
    task = "echo a; sleep 0.3; echo b; exit 0"
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [BIN / "twrun", "--db", db_path, "--", "sh", "-c", task],
            stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert history(db_path, 1).outcome == "COMPLETED"
    log = (logs_of(db_path) / "task_1.log").read_text()
    assert log.startswith("a\n") and log.endswith("b\n")
    assert "copying to twrun's stdout failed (No space left on device)" in log
