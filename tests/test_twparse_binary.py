"""twparse on files that are not text: the lines skipped for it are counted in one warning,
printing keeps the values it could read (exit 0), `--check` fails (exit 1). And twparse,
which reads files only, takes no --db."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import orjson
import pytest

from taskwatcher.grammar import READ_CHUNK
from tests.helpers import BIN, SPEC_EXAMPLE, SPEC_OUTPUT, run_cli

#: Four lines that are not text among good ones: NUL bytes in lines the grammar rejects,
#: bytes that are not UTF-8. A NUL inside a valid line's value is that value's own.
MIXED = b"[a]1\n\x00\x00\x00\n[b]\xff\n[c]\xc3\x28 more\n[d]x\x00y\n\x00[e]2\n[f]3"
MIXED_VALUES = {"a": "1", "d": "x\x00y", "f": "3"}


def not_text(name: str | Path, count: int) -> str:
    return f"twparse: {name}: {count} line(s) skipped: not text\n"


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    path = tmp_path / "feedback.log"
    path.write_bytes(MIXED)
    return path


def test_printing_counts_the_skipped_lines_and_keeps_the_rest(mixed: Path) -> None:
    result = run_cli("twparse", mixed)
    assert result.returncode == 0
    assert orjson.loads(result.stdout) == MIXED_VALUES
    assert result.stderr == not_text(mixed, 4)


def test_check_fails_and_counts_them_too(mixed: Path) -> None:
    result = run_cli("twparse", "--check", mixed)
    assert result.returncode == 1
    assert [line.split(":")[1] for line in result.stdout.splitlines()] == ["2", "3", "4", "6"]
    assert result.stderr == not_text(mixed, 4)


def test_standard_input_is_counted_as_stdin() -> None:
    for options in ([], ["--check"]):
        result = subprocess.run(
            [BIN / "twparse", *options, "-"], input=MIXED, capture_output=True, timeout=30
        )
        assert result.returncode == (1 if options else 0)
        assert result.stderr.decode() == not_text("<stdin>", 4)


def test_binary_lines_are_counted_across_read_chunks(tmp_path: Path) -> None:
    """More than two chunks of lines that are all not text, and one good line at the end."""
    rng = random.Random(15)
    # Random bytes made NUL or high (so no newline), behind a 0xff, which never decodes.
    noise = bytes([0, *(0x80 | byte for byte in range(1, 0x100))])
    bad_lines = [
        b"\xff" + rng.randbytes(rng.randrange(200)).translate(noise)
        for _ in range(3 * READ_CHUNK // 100)
    ]
    path = tmp_path / "binary.log"
    path.write_bytes(b"\n".join([*bad_lines, b"[last]ok\n"]))
    assert path.stat().st_size > 2 * READ_CHUNK
    printed = run_cli("twparse", path)
    assert (printed.returncode, orjson.loads(printed.stdout)) == (0, {"last": "ok"})
    assert printed.stderr == not_text(path, len(bad_lines))
    checked = run_cli("twparse", "--check", path)
    assert checked.returncode == 1
    assert checked.stderr == not_text(path, len(bad_lines))


def test_each_file_checked_gets_its_own_count(mixed: Path, tmp_path: Path) -> None:
    text = tmp_path / "text.log"
    text.write_text(SPEC_EXAMPLE + "not a statement\n")
    result = run_cli("twparse", "--check", text, mixed)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{text}:12:1: ")
    assert result.stderr == not_text(mixed, 4)  # an invalid line of text is no binary data


def test_text_files_get_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "feedback.log"
    path.write_bytes(SPEC_EXAMPLE.encode() + b"[nul]in\x00value\n# caf\xc3\xa9\n")
    printed = run_cli("twparse", path)
    assert printed.returncode == 0 and printed.stderr == ""
    assert orjson.loads(printed.stdout) == {**SPEC_OUTPUT, "nul": "in\x00value"}
    assert run_cli("twparse", "--check", path).returncode == 0


@pytest.mark.parametrize("position", ["before", "after"])
def test_db_is_a_usage_error(mixed: Path, tmp_path: Path, position: str) -> None:
    db = tmp_path / "tasks.db"
    words = ["--db", db, mixed] if position == "before" else [mixed, "--db", db]
    result = run_cli("twparse", *words)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1].startswith("twparse: error: unrecognized arguments: --db")
    assert not db.exists()
