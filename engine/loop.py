"""The supervisor's loop: it sleeps in poll() over the descriptors of its event sources, until
the earliest deadline any of them asks for, and hands each event to its source.

A source is a descriptor to watch (or none) plus a deadline for a look without an event (or
none), and a handler. The child's pidfd, the signal pipe, the wake socket, the task's output
pipes, the feedback file's heartbeat, the kill request in the database and the health clock
are sources today; a notify socket or a database notification channel fit the same shape.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Sequence

from taskwatcher.grammar.protocol import Protocol

#: The longest sleep whatever the deadlines say: a missed event costs at most this.
MAX_SLEEP = 1.0


class Source(Protocol):
    """Something the loop watches on the supervisor's behalf."""

    def fileno(self) -> int | None:
        """The descriptor whose readability is an event, or None (none, or muted for now)."""

    def deadline(self, now: float) -> float | None:
        """When, on the monotonic clock, to be handled even without an event; None: never."""

    def handle(self, now: float) -> None:
        """React to an event, or to the deadline: read, grade, record, or stop the loop."""


def run(sources: Sequence[Source], done: Callable[[], bool], clock: Callable[[], float]) -> None:
    """Poll and dispatch until `done()`; sources are handled in the order given.

    Each turn asks every source once for its descriptor and deadline; a source is handled
    when its descriptor is readable or the deadline it gave has come. A deadline that a
    handler brings forward is seen on the next turn, which then does not sleep.
    """
    poller = select.poll()
    registered: set[int] = set()
    while not done():
        now = clock()
        watched = {fd: source for source in sources if (fd := source.fileno()) is not None}
        due = [source.deadline(now) for source in sources]
        wait = min([MAX_SLEEP, *(when - now for when in due if when is not None)])
        for fd in registered - watched.keys():
            poller.unregister(fd)
        for fd in watched.keys() - registered:
            poller.register(fd, select.POLLIN)
        registered = set(watched)
        ready = {id(watched[fd]) for fd, _ in poller.poll(max(0.0, wait) * 1000)}
        now = clock()
        for source, when in zip(sources, due, strict=True):
            if id(source) in ready or (when is not None and when <= now):
                source.handle(now)
                if done():
                    return


def run_for(
    sources: Sequence[Source],
    seconds: float,
    clock: Callable[[], float],
    done: Callable[[], bool] = lambda: False,
) -> None:
    """Run the sources for `seconds`, or until `done()`: the waits while a task is being
    stopped, when its output and notifications must still be read, and between attempts."""
    until = _Until(clock() + seconds, clock)
    run([*sources, until], lambda: until.passed() or done(), clock)


class _Until:
    """A source that only gives the loop a deadline."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self._deadline, self._clock = deadline, clock

    def passed(self) -> bool:
        return self._clock() >= self._deadline

    def fileno(self) -> int | None:
        return None

    def deadline(self, now: float) -> float | None:
        return self._deadline

    def handle(self, now: float) -> None:
        pass
