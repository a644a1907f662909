"""The task life cycle: one model per task, driven by the transitions table itself.

The table (TRANSITIONS) is the whole behaviour; guards grade the heartbeat age with the
DESIGN.md thresholds. Triggers run as the `transitions` library runs them (the first
transition from the current state whose conditions hold; `before` callbacks with the
trigger's arguments; a trigger without any transition from the state is refused), checked
against a `transitions` machine built from the same table in the tests. The library itself
is not imported here: it costs a supervisor, which lives as long as its task, some 15 ms of
start-up (logging included) and its memory for hours. Nothing here reads a clock or starts
a timer: every time-dependent trigger takes `now`, so the supervisor decides when to look
and tests inject time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from taskwatcher.engine.errors import TransitionNotAllowed
from taskwatcher.engine.lifecycle import (
    STARTED_STATUSES,
    THRESHOLDS,
    TRANSITIONS,
    Status,
    health,
    sources_of,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _grade_is(status: Status) -> Callable[[TaskState, float], bool]:
    """Build the tick guard for one grade; it only reads the model, so `may_tick` stays pure."""

    def guard(task: TaskState, now: float) -> bool:
        return task.grade(now) is status

    guard.__doc__ = f"Whether the heartbeat age at `now` grades the task {status}."
    return guard


class TaskState:
    """One task's life; the triggers (start, heartbeat, tick, time_out, complete, fail,
    retry, kill, lose, expire) are the table's.

    Each trigger returns True when a transition ran; `tick` has no self-loops, so its result
    says whether the state changed. A trigger the table forbids raises TransitionNotAllowed.
    """

    def __init__(
        self,
        taskid: int,
        timeout: float | None = None,
        *,
        state: Status = Status.RESERVED,
        started_at: float | None = None,
        last_heartbeat: float | None = None,
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout cannot be negative: {timeout}")
        self.taskid = taskid
        self.timeout = timeout or None  # 0 disables the timeout, as with timeout(1)
        self.started_at = started_at
        self.last_heartbeat = last_heartbeat if last_heartbeat is not None else started_at
        self.state = Status(state)

    def __repr__(self) -> str:
        return f"TaskState({self.taskid}, {self.state})"

    def start(self, now: float) -> bool:
        return self._fire("start", now)

    def heartbeat(self, when: float) -> bool:
        return self._fire("heartbeat", when)

    def tick(self, now: float) -> bool:
        return self._fire("tick", now)

    def time_out(self) -> bool:
        return self._fire("time_out")

    def complete(self) -> bool:
        return self._fire("complete")

    def fail(self) -> bool:
        return self._fire("fail")

    def retry(self) -> bool:
        return self._fire("retry")

    def kill(self) -> bool:
        return self._fire("kill")

    def lose(self) -> bool:
        return self._fire("lose")

    def expire(self) -> bool:
        return self._fire("expire")

    def may_tick(self, now: float) -> bool:
        """Whether `tick(now)` would change the state; changes nothing itself."""
        return bool(self._candidates("tick")) and self._first("tick", now) is not None

    def _fire(self, trigger: str, *args: Any) -> bool:
        """Run the first transition of `trigger` from the current state whose conditions
        hold, its `before` callback first; False when none holds. TransitionNotAllowed when
        the table has no such transition from here at all."""
        if not self._candidates(trigger):
            raise TransitionNotAllowed(
                f"task {self.taskid} is {self.state}: {trigger} is not allowed"
            )
        transition = self._first(trigger, *args)
        if transition is None:
            return False
        before = transition.get("before")
        if before is not None:
            getattr(self, before)(*args)
        self.state = Status(transition["dest"])
        return True

    def _candidates(self, trigger: str) -> list[dict[str, Any]]:
        return _BY_TRIGGER[trigger].get(self.state, [])

    def _first(self, trigger: str, *args: Any) -> dict[str, Any] | None:
        for transition in self._candidates(trigger):
            condition = transition.get("conditions")
            if condition is None or getattr(self, condition)(*args):
                return transition
        return None

    def mark_start(self, now: float) -> None:
        """The heartbeat clock starts at launch, before any heartbeat came."""
        self.started_at = now
        self.last_heartbeat = now

    def mark_heartbeat(self, when: float) -> None:
        """Never move the heartbeat back: a stale feedback file must not age a fresh task."""
        self.last_heartbeat = (
            when if self.last_heartbeat is None else max(self.last_heartbeat, when)
        )

    def beat(self, when: float) -> None:
        """A heartbeat. A RUNNING task stays RUNNING: only its clock moves, without the trip
        through the machine a self-transition would take (output and sd_notify beat often).
        Once the task is over (TIMEOUT included) a heartbeat changes nothing: output read
        while it is being stopped is no sign of life."""
        if self.state == Status.RUNNING:
            self.mark_heartbeat(when)
        elif self.state in STARTED_STATUSES:
            self.heartbeat(when)

    def retime(self, timeout: float, now: float) -> None:
        """A new heartbeat timeout from `now` on (sd_notify `WATCHDOG_USEC=`), longer or
        shorter: the task knows its own pace. Its clock restarts, as systemd's does."""
        if self.state in STARTED_STATUSES:
            self.timeout = timeout
            self.heartbeat(now)

    def extend(self, until: float) -> None:
        """Push the current heartbeat deadline to at least `until` (`EXTEND_TIMEOUT_USEC=`),
        once: the next deadline counts from real heartbeats again."""
        if self.state in STARTED_STATUSES and self.timeout is not None:
            self.heartbeat(until - self.timeout)

    def age_fraction(self, now: float) -> float:
        """Heartbeat age as a fraction of the timeout; 0 when there is no timeout."""
        if self.timeout is None or self.last_heartbeat is None:
            return 0.0
        return (now - self.last_heartbeat) / self.timeout

    def grade(self, now: float) -> Status:
        """The health `now`, from the age of the last heartbeat of any source."""
        return health(self.age_fraction(now))

    grades_silent = _grade_is(Status.SILENT)
    grades_stalled = _grade_is(Status.STALLED)
    grades_timeout = _grade_is(Status.TIMEOUT)

    def next_deadline(self, now: float) -> float | None:
        """When the grade next changes if no heartbeat comes, so the supervisor can sleep till then.

        None when nothing will change: not started, already final or timed out, or no timeout.
        `now` itself when a grade was crossed since the last tick, which is then overdue (the
        supervisor was busy past the crossing): a grade is never skipped.
        """
        if self.state not in STARTED_STATUSES or self.timeout is None:
            return None
        current = self.grade(now)
        if current is not self.state:
            return now
        for threshold, _ in THRESHOLDS:
            crossing = self._crossing(threshold)
            if crossing > now and self.grade(crossing) is not current:
                return crossing
        return None

    def _crossing(self, threshold: float) -> float:
        """First representable time when the age fraction reaches `threshold` (no rounding gap)."""
        assert self.timeout is not None and self.last_heartbeat is not None
        when = self.last_heartbeat + threshold * self.timeout
        while self.age_fraction(when) < threshold:
            when = math.nextafter(when, math.inf)
        while self.age_fraction(earlier := math.nextafter(when, -math.inf)) >= threshold:
            when = earlier
        return when


def _by_trigger() -> dict[str, dict[Status, list[dict[str, Any]]]]:
    """The table indexed once: for each trigger and source, its transitions in table order."""
    index: dict[str, dict[Status, list[dict[str, Any]]]] = {}
    for transition in TRANSITIONS:
        for source in sources_of(transition):
            index.setdefault(transition["trigger"], {}).setdefault(source, []).append(transition)
    return index


_BY_TRIGGER = _by_trigger()
