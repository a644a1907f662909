"""The cap on what a feedback holds: at most MAX_KEYS keys and MAX_HELD_BYTES of keys and values.

A task can write a million distinct keys in a few megabytes: without the cap every reader
would hold them all. Over the cap the least recently set keys go; the others keep their order.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from taskwatcher.grammar import FeedbackReader, parse_feedback
from taskwatcher.grammar.datatype import replace
from taskwatcher.grammar.reference import parse_with_lark
from taskwatcher.grammar.semantics import CAPPED, MAX_HELD_BYTES, MAX_KEYS
from taskwatcher.grammar.stream import FeedbackStream
from tests.helpers import BIN, run_cli

MiB = 1024 * 1024
#: The keys of the hostile file: each set once, so the most recently set are the last ones.
HOSTILE_KEYS = 700_000
#: The reader's address space: the capped reader needs about 60 MiB, holding every key 135.
ADDRESS_SPACE = 100 * MiB

#: Reads the file to its end with FeedbackReader, prints the keys and warnings as JSON.
READ_TO_THE_END = """
import orjson, os, sys
from taskwatcher.grammar import FeedbackReader
reader = FeedbackReader(sys.argv[1])
warnings = []
while reader.state.offset < os.path.getsize(sys.argv[1]):
    reader.poll()
    warnings += reader.warnings
values = reader.poll(final=True)
print(orjson.dumps({"keys": list(values), "warnings": warnings + reader.warnings}).decode())
"""


def numbered(count: int, prefix: str = "k", value: str = "v", start: int = 0) -> str:
    """`count` lines setting distinct keys: `[k0]v`, `[k1]v`, ... (numbers in hexadecimal)."""
    return "".join(f"[{prefix}{index:x}]{value}\n" for index in range(start, start + count))


def keys(count: int, prefix: str = "k", start: int = 0) -> list[str]:
    return [f"{prefix}{index:x}" for index in range(start, start + count)]


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def test_the_least_recently_set_keys_go_first_and_the_rest_keep_their_order() -> None:
    # k0..k63 are set again after everything else: then k64..k127 are the oldest.
    text = numbered(MAX_KEYS) + numbered(64, value="again") + numbered(64, prefix="n")
    values = parse_feedback(text)
    assert list(values) == keys(64) + keys(MAX_KEYS - 128, start=128) + keys(64, prefix="n")
    assert values["k0"] == "again"
    assert parse_with_lark(text)[0] == values
    assert list(parse_with_lark(text)[0]) == list(values)


def test_a_cleared_key_counts_as_its_keyword() -> None:
    text = numbered(MAX_KEYS, prefix="c", value="") + "[a]1\n"
    stream = FeedbackStream()
    stream.feed(text.encode())
    assert stream.current() == {"a": "1"} == parse_feedback(text)
    assert len(stream.values) == MAX_KEYS
    assert "c0" not in stream.values and "c1" in stream.values


def test_the_bytes_held_are_counted_in_utf8() -> None:
    value = "é" * 30_000  # 60,000 bytes, 30,000 characters
    text = numbered(40, value=value)
    fitting = MAX_HELD_BYTES // (len("k00") + 2 * len(value))
    assert fitting == 17
    assert list(parse_feedback(text)) == keys(fitting, start=40 - fitting)
    assert parse_with_lark(text)[0] == parse_feedback(text)


def test_the_stream_warns_once_and_stays_capped_piece_after_piece() -> None:
    stream = FeedbackStream()
    for piece in range(3):
        stream.feed(numbered(MAX_KEYS // 2 + 1, start=piece * MAX_KEYS).encode())
    assert [str(diagnostic) for diagnostic in stream.diagnostics] == [f" {CAPPED}"]
    assert stream.capped
    assert len(stream.values) == MAX_KEYS
    assert list(stream.values) == list(stream.recency)
    assert list(stream.current())[-1] == f"k{2 * MAX_KEYS + MAX_KEYS // 2:x}"


def test_an_unterminated_last_line_is_capped_and_reported_when_final() -> None:
    stream = FeedbackStream()
    stream.feed((numbered(MAX_KEYS) + "[last]1").encode())
    assert not stream.capped
    values = stream.current(final=True)
    assert len(values) == MAX_KEYS and list(values)[-1] == "last" and "k0" not in values
    assert [diagnostic.message for diagnostic in stream.diagnostics] == [CAPPED]
    assert len(stream.values) == MAX_KEYS  # the line still waits for its newline


def test_a_validation_does_not_report_the_cap() -> None:
    stream = FeedbackStream(check=True)
    stream.feed(numbered(MAX_KEYS + 1).encode())
    assert stream.diagnostics == []
    assert len(stream.values) == MAX_KEYS


def test_a_restored_state_with_too_many_values_is_capped(tmp_path: Path) -> None:
    path = tmp_path / "feedback_1.log"
    path.write_text("[a]1\n")
    first = FeedbackReader(path)
    first.poll()
    # As an older reader, which kept no recency, would have saved it: the order stands for it.
    saved = replace(first.state, values=dict.fromkeys(keys(MAX_KEYS + 5), "v"), recency={})
    reader = FeedbackReader(path, state=saved)
    assert list(reader.poll()) == keys(MAX_KEYS, start=5)
    assert reader.warnings == [f"{path}: {CAPPED}"]
    assert reader.state.recency.keys() == reader.state.values.keys()


def test_the_reader_warns_once_and_its_state_keeps_the_recency(tmp_path: Path) -> None:
    path = tmp_path / "feedback_1.log"
    path.write_text(numbered(MAX_KEYS + 1))
    reader = FeedbackReader(path)
    reader.poll()
    assert reader.warnings == [f"{path}: {CAPPED}"]
    with open(path, "a") as feedback:
        feedback.write(numbered(1, value="again", start=1) + numbered(1, prefix="n"))
    assert "k1" in reader.poll()
    assert reader.warnings == []
    with open(path, "a") as feedback:
        feedback.write(numbered(1, prefix="m"))
    resumed = FeedbackReader(path, state=reader.state)
    values = resumed.poll()
    assert "k1" in values and "k2" not in values and "k3" not in values
    assert resumed.warnings == [f"{path}: {CAPPED}"]


def test_twparse_prints_the_capped_values_and_checks_without_complaint(tmp_path: Path) -> None:
    path = tmp_path / "feedback.log"
    path.write_text(numbered(2 * MAX_KEYS))
    printed = run_cli("twparse", path)
    assert printed.returncode == 0
    assert list(json.loads(printed.stdout)) == keys(MAX_KEYS, start=MAX_KEYS)
    assert printed.stderr == f"twparse: {path}: {CAPPED}\n"
    checked = run_cli("twparse", "--check", path)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_700_000_distinct_keys_are_read_in_bounded_memory(tmp_path: Path) -> None:
    """Holding every key would pass the address-space limit; the cap keeps the last 10,000."""
    path = tmp_path / "feedback_1.log"
    path.write_text(numbered(HOSTILE_KEYS))
    result = subprocess.run(
        [sys.executable, "-c", READ_TO_THE_END, path],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_address_space,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    read = json.loads(result.stdout)
    assert read["keys"] == keys(MAX_KEYS, start=HOSTILE_KEYS - MAX_KEYS)
    capped = [warning for warning in read["warnings"] if CAPPED in warning]
    assert capped == [f"{path}: {CAPPED}"]
    others = set(read["warnings"]) - set(capped)
    assert all("left for the next poll" in warning for warning in others), others


#: A task that sets HOSTILE_KEYS distinct keys in its feedback file, then ends.
WRITES_HOSTILE_KEYS = f"""
import os
with open(os.environ["TASKWATCHER_FEEDBACK"], "w") as out:
    out.write("".join(f"[k{{index:x}}]v\\n" for index in range({HOSTILE_KEYS})))
"""


def test_a_task_with_hostile_keys_is_supervised_in_bounded_memory(
    db_path: Path, tmp_path: Path
) -> None:
    """twrun itself, under an address-space limit the uncapped supervisor overran by far."""
    taskid = run_cli("twctl", "--db", db_path, "reserve").stdout.strip()
    argv = [
        "prlimit", f"--as={2 * ADDRESS_SPACE}", BIN / "twrun", "--db", db_path, "--taskid", taskid,
        "--feedpath", tmp_path, "--", sys.executable, "-c", WRITES_HOSTILE_KEYS,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert CAPPED in result.stderr
    (record,) = json.loads(run_cli("twctl", "--db", db_path, "history", "--json").stdout)
    assert 0 < len(record["feedback"]) <= MAX_KEYS
