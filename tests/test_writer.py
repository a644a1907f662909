"""FeedbackWriter: what task programs write, line by line, and what it refuses to write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from taskwatcher.grammar import FeedbackReader, FeedbackWriter, parse_feedback, validate_feedback
from taskwatcher.grammar.errors import InvalidKeyword, InvalidValue, TaskwatcherError


@pytest.fixture
def feedback(tmp_path: Path) -> Path:
    return tmp_path / "feedback_1.log"


def test_each_call_writes_one_line_that_readers_see_at_once(feedback: Path) -> None:
    reader = FeedbackReader(feedback)
    with FeedbackWriter(feedback) as writer:
        writer.set("info", "Starting test")
        assert reader.poll() == {"info": "Starting test"}
        writer.set("progress", 12)
        writer.clear("info")
        writer.heartbeat()
        writer.comment("half way")
        writer.set("ratio", 0.5)
        assert reader.poll() == {"progress": "12", "ratio": "0.5"}
        writer.clear_all()
        writer.set("report", '{"passed": 3}')
    assert feedback.read_text() == (
        "[info]Starting test\n"
        "[progress]12\n"
        "[info]\n"
        "[heartbeat]\n"
        "# half way\n"
        "[ratio]0.5\n"
        "[]\n"
        '[report]{"passed": 3}\n'
    )
    assert validate_feedback(feedback.read_text()) == []
    assert reader.poll() == {"report": '{"passed": 3}'}


def test_every_call_moves_the_modification_time(feedback: Path) -> None:
    with FeedbackWriter(feedback) as writer:
        for write in (
            writer.heartbeat,
            lambda: writer.set("a", "1"),
            lambda: writer.clear("a"),
            writer.clear_all,
            lambda: writer.comment("x"),
        ):
            os.utime(feedback, ns=(0, 0))
            write()
            assert feedback.stat().st_mtime_ns > 0


def test_the_writer_appends_to_an_existing_file(feedback: Path) -> None:
    feedback.write_text("[a]1\n")
    with FeedbackWriter(feedback) as writer:
        writer.set("b", "2")
    assert parse_feedback(feedback.read_text()) == {"a": "1", "b": "2"}


def test_values_are_written_verbatim(feedback: Path) -> None:
    value = " spaced [with] # brackets  "
    with FeedbackWriter(feedback) as writer:
        writer.set("k", value)
    assert parse_feedback(feedback.read_text()) == {"k": value}


@pytest.mark.parametrize("keyword", ["", "1st", "my key", "a.b", "é", "a]b", "a\n"])
def test_an_invalid_keyword_raises_a_value_error(feedback: Path, keyword: str) -> None:
    with FeedbackWriter(feedback) as writer:
        with pytest.raises(InvalidKeyword, match="invalid feedback keyword") as raised:
            writer.set(keyword, "v")
        assert isinstance(raised.value, ValueError)
        assert isinstance(raised.value, TaskwatcherError)
        with pytest.raises(ValueError, match="not starting with a digit"):
            writer.clear(keyword)
    assert feedback.read_text() == ""


@pytest.mark.parametrize("value", ["two\nlines", "carriage\rreturn", "crlf\r\n", ""])
def test_a_value_that_is_not_one_line_raises_a_value_error(feedback: Path, value: str) -> None:
    with (
        FeedbackWriter(feedback) as writer,
        pytest.raises(InvalidValue, match="non-empty and hold no line break"),
    ):
        writer.set("k", value)
    assert feedback.read_text() == ""


def test_a_comment_with_a_line_break_raises_a_value_error(feedback: Path) -> None:
    with FeedbackWriter(feedback) as writer, pytest.raises(ValueError, match="no line break"):
        writer.comment("one\n[injected]line")
    assert feedback.read_text() == ""
