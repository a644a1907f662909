"""The supervisor's loop over event sources, with sources made up for the test."""

from __future__ import annotations

import os
import time

from taskwatcher.engine import loop


class Timed:
    """A source with no descriptor that wants a look at given times."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)
        self.handled: list[float] = []

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        return self.times[0] if self.times else None

    def handle(self, now: float) -> None:
        self.handled.append(self.times.pop(0))


class Pipe:
    """A source whose descriptor is the read end of a pipe; it can be muted."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.muted = False
        self.got: list[bytes] = []

    def fileno(self) -> int | None:
        return None if self.muted else self.read_fd

    def deadline(self, now: float) -> float | None:
        return None

    def handle(self, now: float) -> None:
        self.got.append(os.read(self.read_fd, 100))


def test_deadlines_are_met_in_order_and_done_stops_the_loop() -> None:
    start = time.monotonic()
    timed = Timed(start + 0.02, start + 0.04, start + 0.06)
    loop.run([timed], lambda: len(timed.handled) == 2, time.monotonic)
    assert timed.handled == [start + 0.02, start + 0.04]  # the third never came
    assert time.monotonic() >= start + 0.04


def test_a_readable_descriptor_is_handled_and_a_muted_one_is_not_polled() -> None:
    pipe, muted = Pipe(), Pipe()
    muted.muted = True
    os.write(pipe.write_fd, b"event")
    os.write(muted.write_fd, b"unseen")
    ticks = Timed(time.monotonic() + 0.05)
    loop.run([pipe, muted, ticks], lambda: not ticks.times, time.monotonic)
    assert pipe.got == [b"event"]
    assert muted.got == []


def test_sources_are_handled_in_the_order_given_and_the_loop_ends_between_two() -> None:
    first, second = Pipe(), Pipe()
    os.write(first.write_fd, b"1")
    os.write(second.write_fd, b"2")
    loop.run([first, second], lambda: bool(first.got), time.monotonic)
    assert (first.got, second.got) == ([b"1"], [])
