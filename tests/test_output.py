"""The pieces of output capture on their own: the log's rotation, the writer thread, the tail."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from taskwatcher.engine.errors import FeedpathUnusable
from taskwatcher.engine.output import TAIL_BYTES, LogFile, Tail, Writer, rotated, write_all


def test_a_log_rotates_once_at_its_limit_and_keeps_every_byte_of_the_last_two_files(
    tmp_path: Path,
) -> None:
    log = LogFile(tmp_path / "task_1.log", max_bytes=10)
    log.create()
    for piece in (b"0123456", b"789abcdefghij", b"klmnopqrstuvwxyz"):
        log.write(piece)
    log.close()
    assert rotated(log.path).read_bytes() == b"klmnopqrst"  # 36 bytes: 4 files of 10 at most
    assert log.path.read_bytes() == b"uvwxyz"


def test_creating_a_log_removes_leftovers_and_never_follows_a_link(tmp_path: Path) -> None:
    path = tmp_path / "task_1.log"
    rotated(path).write_text("an older task's output")
    secret = tmp_path / "secret"
    secret.write_text("keep")
    path.symlink_to(secret)
    log = LogFile(path)
    log.create()
    log.write(b"new\n")
    log.close()
    assert (path.read_text(), secret.read_text()) == ("new\n", "keep")
    assert not rotated(path).exists() and not path.is_symlink()


def test_a_log_that_cannot_be_made_says_why(tmp_path: Path) -> None:
    with pytest.raises(FeedpathUnusable, match=r"cannot create the log .*No such file"):
        LogFile(tmp_path / "missing" / "task_1.log").create()


def test_a_writer_keeps_order_and_its_first_error_and_rings_once_it_failed() -> None:
    read, write = os.pipe()
    rings = threading.Event()
    writer = Writer("test", write_all(write), rings.set)
    for n in range(100):
        writer.offer(f"{n}\n".encode())
    assert writer.close(timeout=10)
    os.close(write)
    assert os.read(read, 1 << 16).decode().split() == [str(n) for n in range(100)]
    broken = Writer("broken", write_all(write), rings.set)  # write end closed: EBADF
    broken.offer(b"lost")
    assert rings.wait(10) and isinstance(broken.error, OSError)
    broken.offer(b"refused")
    assert not broken.close(timeout=10) and not broken.full
    os.close(read)


def test_a_writer_given_nothing_costs_no_thread_and_one_without_a_thread_fails_as_a_write() -> None:
    threads = threading.active_count()
    idle = Writer("idle", write_all(1), lambda: None)
    assert threading.active_count() == threads and not idle.busy
    assert idle.close(timeout=0)
    size = threading.stack_size(1 << 46)  # more than the machine can map: no thread starts
    try:
        starved = Writer("starved", write_all(1), lambda: None)
        starved.offer(b"lost")
    finally:
        threading.stack_size(size)
    assert isinstance(starved.error, OSError) and not starved.busy and not starved.full
    assert not starved.close(timeout=0)


def test_the_tail_is_the_last_lines_within_its_byte_budget() -> None:
    tail = Tail()
    assert tail.text() is None
    for n in range(1000):
        tail.add(f"line {n}\n".encode())
    assert tail.text().split("\n") == [f"line {n}" for n in range(980, 1000)]
    long_line = Tail()
    long_line.add(b"x" * (3 * TAIL_BYTES) + b"\xff\n")
    text = long_line.text()
    assert text.endswith("x\\xff") and len(text.encode()) <= TAIL_BYTES + 3
    euros = Tail()
    euros.add("€".encode() * 3000)  # 9,000 bytes: the cut falls inside a character
    assert set(euros.text()) == {"€"}
