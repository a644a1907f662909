"""twctl history on a large history: streamed in bounded memory, a page on a terminal."""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from taskwatcher.engine.store import open_store
from tests.helpers import BIN, on_a_terminal, run_cli

ROWS = 50_000
#: The address space twctl may use: twice what it needs to stream (it streams within 30 MiB
#: here), well below what holding ROWS records takes (between 80 and 100 MiB, measured).
ADDRESS_SPACE = 64 * 2**20
T0 = 1_700_000_000.0


def build_history(db: Path, rows: int) -> None:
    """`rows` finished tasks, written with plain sqlite3 into a schema made by the store."""
    open_store(db).close()
    values = (
        (i, f"job-{i % 7}", f"lab {i}", T0 + i, T0 + i + 1, b'{"progress":"100"}')
        for i in range(1, rows + 1)
    )
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.executemany(
            "INSERT INTO history (taskid, taskname, info1, outcome, exitcode, termsignal,"
            " starttime, endtime, duration, feedback)"
            " VALUES (?, ?, ?, 'COMPLETED', 0, 'EXIT', ?, ?, 1.0, ?)",
            values,
        )


@pytest.fixture(scope="module")
def large_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("large") / "tasks.db"
    build_history(db, ROWS)
    return db


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def history_to_file(db: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """twctl history piped into a file, under the address-space limit."""
    with out.open("w") as stdout:
        return subprocess.run(
            [BIN / "twctl", "--db", db, "history", *args],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            preexec_fn=limit_address_space,
        )


def json_array_items(text: str) -> Iterator[dict]:
    """The items of a JSON array, decoded one at a time so the test holds only the text."""
    decoder = json.JSONDecoder()
    assert text.startswith("[") and text.endswith("]\n"), (text[:100], text[-100:])
    index = 1
    while text[index] != "]":
        item, index = decoder.raw_decode(text, index)
        yield item
        index += text[index] == ","
    assert index == len(text) - 2


def test_json_is_complete_and_valid_in_bounded_memory(large_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "history.json"
    result = history_to_file(large_db, out, "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    taskids = [item["taskid"] for item in json_array_items(out.read_text())]
    assert taskids == list(range(ROWS, 0, -1))


def test_plain_text_is_complete_and_aligned_in_bounded_memory(
    large_db: Path, tmp_path: Path
) -> None:
    out = tmp_path / "history.txt"
    result = history_to_file(large_db, out)
    assert result.returncode == 0, result.stderr[-2000:]
    header, *lines = out.read_text().splitlines()
    assert len(lines) == ROWS
    assert lines[0].split()[:3] == [str(ROWS), f"job-{ROWS % 7}", "lab"]
    outcome, endtime = header.index("outcome"), header.index("endtime")
    for line in lines:
        assert line[outcome:].startswith("COMPLETED "), line
        assert line[endtime - 2 : endtime] == "  " and line[endtime] != " ", line


def test_a_terminal_gets_a_page_and_how_to_see_more(db_path: Path) -> None:
    build_history(db_path, 60)
    twctl = [BIN / "twctl", "--db", db_path, "history"]
    page = on_a_terminal(*twctl)
    assert page.count("COMPLETED") == 50 and "lab 11 " in page and "lab 10 " not in page
    assert "showing the 50 most recent; --all or --limit N for more" in page
    everything = on_a_terminal(*twctl, "--all")
    assert everything.count("COMPLETED") == 60 and "showing" not in everything
    assert on_a_terminal(*twctl, "--limit", "55").count("COMPLETED") == 55
    assert len(json.loads(on_a_terminal(*twctl, "--json"))) == 60


def test_a_short_history_on_a_terminal_needs_no_caption(db_path: Path) -> None:
    build_history(db_path, 50)
    page = on_a_terminal(BIN / "twctl", "--db", db_path, "history")
    assert page.count("COMPLETED") == 50 and "showing" not in page


def test_pipes_get_everything(db_path: Path) -> None:
    build_history(db_path, 60)
    result = run_cli("twctl", "--db", db_path, "history")
    assert len(result.stdout.splitlines()) == 61


def test_all_and_limit_exclude_each_other(db_path: Path) -> None:
    result = run_cli("twctl", "--db", db_path, "history", "--all", "--limit", "3")
    assert result.returncode == 2 and "not allowed with" in result.stderr
