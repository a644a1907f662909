"""FeedbackReader on real files: appends, partial lines, truncation, replacement, saved state,
and the budgets that bound every poll."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from itertools import count
from pathlib import Path

import pytest

from taskwatcher.grammar import MAX_LINE_BYTES, FeedbackReader, ReaderState, parse_feedback
from taskwatcher.grammar.errors import InvalidReaderState, TaskwatcherError
from taskwatcher.grammar.reader import BYTE_BUDGET

TiB = 1024**4
LOST = "keys set only there are lost"


@pytest.fixture
def feedback(tmp_path: Path) -> Path:
    return tmp_path / "feedback_1.log"


def append(path: Path, data: str | bytes) -> None:
    with open(path, "ab") as file:
        file.write(data.encode() if isinstance(data, str) else data)


def test_a_missing_file_reads_as_empty(feedback: Path) -> None:
    reader = FeedbackReader(feedback)
    assert reader.poll() == {}
    assert reader.warnings == []


def test_appended_lines_update_the_values(feedback: Path) -> None:
    append(feedback, "[a]1\n[b]2\n")
    reader = FeedbackReader(feedback)
    assert reader.poll() == {"a": "1", "b": "2"}
    append(feedback, "[a]3\n[b]\n[c]4\n")
    assert reader.poll() == {"a": "3", "c": "4"}
    assert reader.poll() == {"a": "3", "c": "4"}
    append(feedback, "[]\n[d]5\n")
    assert reader.poll() == {"d": "5"}


def test_only_the_appended_bytes_are_read(feedback: Path) -> None:
    append(feedback, "[a]1\n")
    reader = FeedbackReader(feedback)
    reader.poll()
    _rewrite_first_byte_after_bracket(feedback, b"9")
    append(feedback, "[b]2\n")
    assert reader.poll() == {"a": "1", "b": "2"}
    assert reader.state.offset == feedback.stat().st_size


def test_an_unterminated_line_waits_for_its_newline(feedback: Path) -> None:
    append(feedback, "[a]1\n[b]2")
    reader = FeedbackReader(feedback)
    assert reader.poll() == {"a": "1"}
    assert reader.poll(final=True) == {"a": "1", "b": "2"}
    assert reader.state.pending == b"[b]2"
    append(feedback, "3")
    assert reader.poll() == {"a": "1"}
    append(feedback, "4\n[c")
    assert reader.poll() == {"a": "1", "b": "234"}
    append(feedback, "]5\n")
    assert reader.poll() == {"a": "1", "b": "234", "c": "5"}


def test_a_file_that_shrinks_is_read_again_from_the_start(feedback: Path) -> None:
    append(feedback, "[a]1\n[b]2\n")
    reader = FeedbackReader(feedback)
    reader.poll()
    inode = feedback.stat().st_ino
    with open(feedback, "r+b") as file:
        file.truncate(0)
    append(feedback, "[c]3\n")
    assert feedback.stat().st_ino == inode
    assert reader.poll() == {"c": "3"}


def test_a_file_rewritten_in_place_and_grown_is_read_again(feedback: Path) -> None:
    append(feedback, "[a]1\n[b]2\n")
    reader = FeedbackReader(feedback)
    reader.poll()
    with open(feedback, "r+b") as file:
        file.truncate(0)
        file.write(b"[x]a longer first line\n[y]2\n")
    assert reader.poll() == {"x": "a longer first line", "y": "2"}


def test_a_replaced_file_is_read_from_the_start(feedback: Path, tmp_path: Path) -> None:
    append(feedback, "[a]1\n[b]2\n")
    reader = FeedbackReader(feedback)
    reader.poll()
    replacement = tmp_path / "new.log"
    append(replacement, "[a]1\n[b]2\n[c]3\n")
    os.replace(replacement, feedback)
    assert reader.poll() == {"a": "1", "b": "2", "c": "3"}


def test_a_deleted_file_reads_as_empty_and_a_new_one_from_its_start(feedback: Path) -> None:
    append(feedback, "[a]1\n")
    reader = FeedbackReader(feedback)
    reader.poll()
    feedback.unlink()
    assert reader.poll() == {}
    append(feedback, "[b]2\n")
    assert reader.poll() == {"b": "2"}


def test_the_state_survives_a_round_trip_through_json(feedback: Path) -> None:
    append(feedback, "[a]1\n[b]\n[c]3\n[d]4")
    first = FeedbackReader(feedback)
    first.poll()
    saved = first.state.to_json()
    assert isinstance(saved, bytes)
    assert ReaderState.from_json(saved) == first.state


def test_a_second_reader_resumes_where_the_first_stopped(feedback: Path) -> None:
    append(feedback, "[a]1\n[b]\n[c]3\n[d]4")
    first = FeedbackReader(feedback)
    assert first.poll() == {"a": "1", "c": "3"}
    saved = first.state.to_json()

    _rewrite_first_byte_after_bracket(feedback, b"9")
    append(feedback, "4\n[b]2\n")
    second = FeedbackReader(feedback, state=ReaderState.from_json(saved))
    values = second.poll()
    assert values == {"a": "1", "b": "2", "c": "3", "d": "44"}
    assert list(values) == ["a", "b", "c", "d"]
    assert second.state.offset == feedback.stat().st_size


def test_a_saved_state_of_another_file_starts_over(feedback: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.log"
    append(other, "[old]1\n")
    first = FeedbackReader(other)
    first.poll()
    append(feedback, "[new]2\n")
    assert FeedbackReader(feedback, state=first.state).poll() == {"new": "2"}


@pytest.mark.parametrize(
    "saved",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": 99}',
        b'{"format": 1, "device": 1}',
        b'{"format": 1, "device": 1, "inode": 2, "offset": -1, "pending": "", "skipping": false,'
        b' "lines": 0, "values": {}}',
        b'{"format": 1, "device": 1, "inode": 2, "offset": 0, "pending": "!!", "skipping": false,'
        b' "lines": 0, "values": {}}',
        b'{"format": 1, "device": 1, "inode": 2, "offset": 0, "pending": "", "skipping": false,'
        b' "lines": 0, "values": {"a": 1}}',
        b'{"format": 1, "device": 1, "inode": 2, "offset": 0, "pending": "", "skipping": false,'
        b' "lines": 0, "values": {}, "extra": 1}',
    ],
)
def test_an_unusable_saved_state_raises_a_value_error(saved: bytes) -> None:
    with pytest.raises(InvalidReaderState) as raised:
        ReaderState.from_json(saved)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, TaskwatcherError)


def test_an_over_long_line_is_skipped_and_reported(feedback: Path) -> None:
    append(feedback, b"[a]1\n[big]" + b"x" * MAX_LINE_BYTES + b"\n[b]2\n")
    reader = FeedbackReader(feedback)
    assert reader.poll() == {"a": "1", "b": "2"}
    assert reader.warnings == [
        f"{feedback}:2:{MAX_LINE_BYTES + 1}: line longer than 65536 bytes: skipped"
    ]


def test_an_over_long_line_arriving_in_pieces_is_never_buffered(feedback: Path) -> None:
    append(feedback, b"[a]1\n[big]" + b"x" * 1000)
    reader = FeedbackReader(feedback)
    reader.poll()
    append(feedback, b"x" * MAX_LINE_BYTES)
    assert reader.poll() == {"a": "1"}
    assert len(reader.warnings) == 1
    state = reader.state
    assert state.skipping
    assert state.pending == b""

    append(feedback, b"x" * MAX_LINE_BYTES)
    resumed = FeedbackReader(feedback, state=ReaderState.from_json(state.to_json()))
    assert resumed.poll() == {"a": "1"}
    append(feedback, b"xx\n[b]2\n")
    assert resumed.poll() == {"a": "1", "b": "2"}
    assert resumed.warnings == []


def test_a_line_of_exactly_the_limit_is_kept(feedback: Path) -> None:
    value = "v" * (MAX_LINE_BYTES - len("[k]"))
    append(feedback, f"[k]{value}\n")
    assert FeedbackReader(feedback).poll() == {"k": value}


def test_lines_that_are_not_utf8_are_skipped(feedback: Path) -> None:
    append(feedback, b"[a]caf\xc3\xa9\n[b]\xff\xfe\n[c]\x00nul\n\xc3\n[d]4\n")
    reader = FeedbackReader(feedback)
    assert reader.poll() == {"a": "café", "c": "\x00nul", "d": "4"}


def test_binary_garbage_never_raises(feedback: Path) -> None:
    append(feedback, bytes(range(256)) * 200 + b"\n[a]1\n")
    assert FeedbackReader(feedback).poll() == {"a": "1"}


def test_reading_in_small_chunks_gives_the_same_values(feedback: Path) -> None:
    text = "[a]1\n# note\n[b]two words\r\n[a]\n[]\n[c]3\n  [d]4\n[c]5\n[e]6"
    append(feedback, text)
    reader = FeedbackReader(feedback, chunk_size=3)
    assert reader.poll(final=True) == parse_feedback(text)


def test_a_fifo_is_refused_without_blocking(feedback: Path) -> None:
    append(feedback, "[a]1\n")
    reader = FeedbackReader(feedback)
    reader.poll()
    feedback.unlink()
    os.mkfifo(feedback)
    assert reader.poll() == {"a": "1"}
    assert reader.warnings == [f"{feedback}: not a regular file"]


def test_a_symlink_to_dev_zero_is_refused(feedback: Path) -> None:
    feedback.symlink_to("/dev/zero")
    reader = FeedbackReader(feedback)
    assert reader.poll() == {}
    assert reader.warnings == [f"{feedback}: not a regular file"]


def test_a_directory_is_refused(feedback: Path) -> None:
    feedback.mkdir()
    reader = FeedbackReader(feedback)
    assert reader.poll() == {}
    assert reader.warnings == [f"{feedback}: not a regular file"]


# Budgets: small ones, and a clock that moves on every reading, stand in for huge files and
# slow disks; the terabyte is real, but sparse.


def moving_clock(step: float) -> Callable[[], float]:
    """A monotonic clock that moves `step` seconds every time it is read."""
    ticks = count()
    return lambda: next(ticks) * step


def test_a_reader_far_behind_skips_to_the_last_budget_from_a_line_start(feedback: Path) -> None:
    head = "[a]1\n[b]old\n" * 10
    tail = "[x]yyyyyyyy\n[b]2\n[c]3\n"
    append(feedback, head + tail)
    reader = FeedbackReader(feedback, byte_budget=len(tail) - 3)  # from inside the [x] line
    assert reader.poll() == {"b": "2", "c": "3"}
    reason = f"skipped {len(head) + 3} bytes (more than {len(tail) - 3} bytes behind); {LOST}"
    assert reader.incomplete == reason
    assert reader.warnings == [f"{feedback}: {reason}"]
    assert reader.state.offset == feedback.stat().st_size


def test_values_read_before_a_skip_are_kept_and_the_partial_line_dropped(feedback: Path) -> None:
    append(feedback, "[a]1\n[b]old\n[p]partial")
    reader = FeedbackReader(feedback, byte_budget=100)
    assert reader.poll() == {"a": "1", "b": "old"}
    append(feedback, " line\n" + "[c]3\n" * 100 + "[b]2\n")
    assert reader.poll(final=True) == {"a": "1", "b": "2", "c": "3"}
    assert reader.incomplete is not None and reader.incomplete.startswith("skipped 4")
    assert reader.poll() == {"a": "1", "b": "2", "c": "3"}
    assert (reader.incomplete, reader.warnings) == (None, [])


def test_a_window_without_a_newline_is_one_over_long_line(feedback: Path) -> None:
    append(feedback, "[a]1\n")
    reader = FeedbackReader(feedback, byte_budget=64)
    reader.poll()
    append(feedback, "x" * 1000)
    assert reader.poll(final=True) == {"a": "1"}
    assert reader.state.skipping
    append(feedback, "x\n[b]2\n")
    assert reader.poll() == {"a": "1", "b": "2"}
    assert (reader.incomplete, reader.warnings) == (None, [])


def test_after_a_skip_warnings_give_no_line_numbers_any_more(feedback: Path) -> None:
    append(feedback, "[a]1\n" * 60_000)
    reader = FeedbackReader(feedback, byte_budget=4 * MAX_LINE_BYTES)
    reader.poll()
    assert not reader.state.lines_known
    append(feedback, "[big]" + "x" * MAX_LINE_BYTES + "\n[b]2\n")
    resumed = FeedbackReader(feedback, state=ReaderState.from_json(reader.state.to_json()))
    assert resumed.poll() == {"a": "1", "b": "2"}
    assert resumed.warnings == [f"{feedback}: line longer than 65536 bytes: skipped"]
    assert resumed.incomplete is None


def test_a_poll_out_of_time_stops_at_a_chunk_boundary(feedback: Path) -> None:
    text = "[a]1\n[b]2\n[c]3\n[d]4\n[e]55\n[f]6\n"
    append(feedback, text)
    # Read at the start and after each 8-byte chunk: past the 1 s budget after the third.
    reader = FeedbackReader(feedback, chunk_size=8, clock=moving_clock(0.4))
    # "[e]5" ends the third chunk: not the file's last line, so not taken even when final.
    assert reader.poll(final=True) == {"a": "1", "b": "2", "c": "3", "d": "4"}
    left = len(text) - 24
    assert reader.incomplete == f"read for more than 1 s; {left} bytes left for the next poll"
    assert reader.warnings == [f"{feedback}: {reader.incomplete}"]
    assert (reader.state.offset, reader.state.pending) == (24, b"[e]5")


def test_the_next_poll_resumes_where_time_ran_out(feedback: Path) -> None:
    append(feedback, "".join(f"[k{index}]{index}\n" for index in range(10)))
    reader = FeedbackReader(feedback, chunk_size=8, clock=moving_clock(0.4))
    values = reader.poll(final=True)
    polls = 1
    while reader.incomplete is not None:
        assert reader.incomplete.startswith("read for more than 1 s;")
        saved = ReaderState.from_json(reader.state.to_json())
        reader = FeedbackReader(feedback, saved, chunk_size=8, clock=moving_clock(0.4))
        values = reader.poll(final=True)
        polls += 1
    assert values == {f"k{index}": str(index) for index in range(10)}
    assert polls == -(-feedback.stat().st_size // 24)  # three chunks a poll


def test_a_poll_that_cannot_read_the_file_is_incomplete(feedback: Path) -> None:
    append(feedback, "[a]1\n")
    reader = FeedbackReader(feedback)
    assert (reader.poll(), reader.incomplete) == ({"a": "1"}, None)
    feedback.unlink()
    os.mkfifo(feedback)
    assert reader.poll() == {"a": "1"}
    assert reader.incomplete == "not a regular file"
    feedback.unlink()
    assert (reader.poll(), reader.incomplete, reader.warnings) == ({}, None, [])


def test_a_sparse_terabyte_is_read_within_the_budget(feedback: Path) -> None:
    append(feedback, "[a]1\n[p]partial")
    reader = FeedbackReader(feedback)
    assert reader.poll() == {"a": "1"}
    os.truncate(feedback, TiB)
    append(feedback, "\n[b]2\n")  # NUL bytes up to here: one over-long line
    assert reader.poll(final=True) == {"a": "1", "b": "2"}
    assert reader.incomplete == f"skipped 1.0 TiB (more than 16 MiB behind); {LOST}"
    assert reader.warnings == [f"{feedback}: {reader.incomplete}"]
    assert reader.state.offset == TiB + len("\n[b]2\n")


#: A fresh reader's final read, as twrun's at the end of a task: values, then `incomplete`.
FINAL_READ = """
import sys
from taskwatcher.grammar import FeedbackReader
reader = FeedbackReader(sys.argv[1])
print(reader.poll(final=True))
print(reader.incomplete)
"""


def test_a_sparse_terabyte_in_another_process(feedback: Path) -> None:
    feedback.touch()
    os.truncate(feedback, TiB)
    append(feedback, "\n[b]2")  # the last line, unterminated: the final read takes it
    result = subprocess.run(
        [sys.executable, "-c", FINAL_READ, feedback], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    skipped = TiB + len("\n[b]2") - BYTE_BUDGET
    assert result.stdout.splitlines() == [
        "{'b': '2'}",
        f"skipped {skipped / TiB:.1f} TiB (more than 16 MiB behind); {LOST}",
    ]


def _rewrite_first_byte_after_bracket(path: Path, replacement: bytes) -> None:
    """Change already-read content in place, to prove it is not read again."""
    with open(path, "r+b") as file:
        file.seek(3)
        file.write(replacement)
