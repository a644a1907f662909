"""twparse as users run it: a subprocess, real files, exit statuses from DESIGN.md."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from taskwatcher.grammar import MAX_LINE_BYTES
from tests.helpers import BIN, SPEC_EXAMPLE, SPEC_OUTPUT, run_cli


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "feedback.log"
    path.write_text(SPEC_EXAMPLE)
    return path


def test_prints_the_values_as_one_json_line(spec_file: Path) -> None:
    result = run_cli("twparse", spec_file)
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1
    assert orjson.loads(result.stdout) == SPEC_OUTPUT
    assert result.stderr == ""


def test_the_seed_spelling_feedback_file_works(spec_file: Path) -> None:
    result = run_cli("twparse", "--feedback", spec_file)
    assert result.returncode == 0
    assert orjson.loads(result.stdout) == SPEC_OUTPUT


def test_pretty_indents_the_json(spec_file: Path) -> None:
    result = run_cli("twparse", "--pretty", spec_file)
    assert result.returncode == 0
    assert result.stdout.startswith('{\n  "playbook": "myPlaybook",\n')
    assert orjson.loads(result.stdout) == SPEC_OUTPUT


def test_a_dash_reads_standard_input() -> None:
    result = run_cli("twparse", "-", input="[a]1\r\n[b]two\r\n[c]3")
    assert result.returncode == 0
    assert orjson.loads(result.stdout) == {"a": "1", "b": "two", "c": "3"}


def test_invalid_lines_are_skipped_when_printing(tmp_path: Path) -> None:
    path = tmp_path / "feedback.log"
    path.write_bytes(b"[a]1\ngarbage\n[1x]y\n[b]\xff\n[c]3\n")
    result = run_cli("twparse", path)
    assert result.returncode == 0
    assert orjson.loads(result.stdout) == {"a": "1", "c": "3"}


def test_an_over_long_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "feedback.log"
    path.write_bytes(b"[a]1\n[big]" + b"x" * MAX_LINE_BYTES + b"\n[b]2\n")
    result = run_cli("twparse", path)
    assert result.returncode == 0
    assert orjson.loads(result.stdout) == {"a": "1", "b": "2"}
    assert result.stderr == f"twparse: {path}:2:65537: line longer than 65536 bytes: skipped\n"


@pytest.mark.parametrize("name", ["missing.log", "fifo", "directory", "dev-zero", "file/child"])
def test_unreadable_input_is_one_line_on_stderr_and_exit_2(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "file/child":
        path.parent.write_text("")
    elif name == "fifo":
        os.mkfifo(path)
    elif name == "directory":
        path.mkdir()
    elif name == "dev-zero":
        path.symlink_to("/dev/zero")
    result = run_cli("twparse", path, timeout=10)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"twparse: {path}: ")
    assert "Traceback" not in result.stderr


def test_a_file_without_read_permission_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "feedback.log"
    path.write_text("[a]1\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running with privileges that ignore file modes")
    result = run_cli("twparse", path)
    assert (result.returncode, result.stderr) == (2, f"twparse: {path}: Permission denied\n")


def test_check_prints_file_line_column_message_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "feedback.log"
    path.write_bytes(b"[a]1\n[1st]x\n[b]\xff\n[my key]v\n[c\n")
    result = run_cli("twparse", "--check", path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{path}:2:2: keyword must not start with a digit: found '1', expected a keyword or ']'",
        f"{path}:3:4: invalid UTF-8: byte 0xff does not decode",
        f"{path}:4:4: keyword must not contain spaces: found a space, expected ']'",
        f"{path}:5:3: found end of line, expected ']'",
    ]


def test_check_of_valid_files_is_silent_and_exits_0(spec_file: Path, tmp_path: Path) -> None:
    crlf = tmp_path / "crlf.log"
    crlf.write_bytes(SPEC_EXAMPLE.replace("\n", "\r\n").encode())
    result = run_cli("twparse", "--check", spec_file, crlf)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_check_goes_through_every_file_and_reports_the_worst(
    spec_file: Path, tmp_path: Path
) -> None:
    invalid = tmp_path / "invalid.log"
    invalid.write_text("oops\n")
    missing = tmp_path / "missing.log"
    result = run_cli("twparse", "--check", invalid, missing, spec_file)
    assert result.returncode == 2
    assert result.stdout.startswith(f"{invalid}:1:1: ")
    assert result.stderr == f"twparse: {missing}: No such file or directory\n"


def test_check_reads_standard_input() -> None:
    result = run_cli("twparse", "--check", "-", input="[a]1\n[]x\n")
    assert result.returncode == 1
    assert result.stdout == "<stdin>:2:3: '[]' takes no value: found 'x', expected end of line\n"


@pytest.mark.parametrize("arguments", [[], ["one.log", "two.log"], ["--no-such-option"]])
def test_usage_errors_exit_2_without_traceback(arguments: list[str]) -> None:
    result = run_cli("twparse", *arguments)
    assert result.returncode == 2
    assert "usage: twparse" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_logs_to_stderr(spec_file: Path) -> None:
    result = run_cli("twparse", "-v", spec_file)
    assert result.returncode == 0
    assert result.stderr == f"twparse: {spec_file}: 11 lines, 4 keywords\n"
    assert orjson.loads(result.stdout) == SPEC_OUTPUT


def test_a_reader_that_stops_early_causes_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "feedback.log"
    path.write_text("oops\n" * 5000)
    with subprocess.Popen(
        [BIN / "twparse", "--check", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as twparse:
        twparse.stdout.close()
        errors = twparse.stderr.read()
    assert twparse.returncode == 0
    assert errors == b""
