"""The task life cycle as plain data: the statuses, the heartbeat grades, the transitions table.

This is the one place that says which status may follow which. The supervisor drives each
task's model through TRANSITIONS (`engine.machine`), as a `transitions` machine built from
it would (the tests hold the two to the same results); the store checks every write of a
status or an outcome against the same table (`step`), in the same transaction.
"""

from __future__ import annotations

from enum import StrEnum

from taskwatcher.engine.errors import TransitionNotAllowed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Status(StrEnum):
    """Every state a task can be in; the first five are live, the rest are final outcomes."""

    RESERVED = "RESERVED"
    RUNNING = "RUNNING"
    SILENT = "SILENT"
    STALLED = "STALLED"
    RETRYING = "RETRYING"  # an attempt failed; its supervisor waits to launch the next
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    KILLED = "KILLED"
    LOST = "LOST"
    EXPIRED = "EXPIRED"


#: Started and alive: graded by heartbeat age.
STARTED_STATUSES = (Status.RUNNING, Status.SILENT, Status.STALLED)
#: Held by a supervisor, started or between two attempts: what it can be asked to stop.
SUPERVISED_STATUSES = (*STARTED_STATUSES, Status.RETRYING)
LIVE_STATUSES = frozenset({Status.RESERVED, *SUPERVISED_STATUSES})
FINAL_STATUSES = frozenset(Status) - LIVE_STATUSES

SILENT_AT = 0.25
STALLED_AT = 0.5
TIMEOUT_AT = 1.0
#: Heartbeat-age fraction from which each grade applies, mildest first.
THRESHOLDS = (
    (SILENT_AT, Status.SILENT),
    (STALLED_AT, Status.STALLED),
    (TIMEOUT_AT, Status.TIMEOUT),
)


def health(fraction: float) -> Status:
    """Grade a heartbeat age given as a fraction of the timeout: the one rule of DESIGN.md."""
    grade = Status.RUNNING
    for threshold, status in THRESHOLDS:
        if fraction >= threshold:
            grade = status
    return grade


TRANSITIONS: list[dict[str, Any]] = [
    {
        "trigger": "start",
        "source": [Status.RESERVED, Status.RETRYING],
        "dest": Status.RUNNING,
        "before": "mark_start",
    },
    {"trigger": "expire", "source": Status.RESERVED, "dest": Status.EXPIRED},
    {
        "trigger": "heartbeat",
        "source": STARTED_STATUSES,
        "dest": Status.RUNNING,
        "before": "mark_heartbeat",
    },
    {
        "trigger": "tick",
        "source": Status.RUNNING,
        "dest": Status.SILENT,
        "conditions": "grades_silent",
    },
    {
        "trigger": "tick",
        "source": [Status.RUNNING, Status.SILENT],
        "dest": Status.STALLED,
        "conditions": "grades_stalled",
    },
    {
        "trigger": "tick",
        "source": STARTED_STATUSES,
        "dest": Status.TIMEOUT,
        "conditions": "grades_timeout",
    },
    {"trigger": "time_out", "source": STARTED_STATUSES, "dest": Status.TIMEOUT},
    {"trigger": "complete", "source": STARTED_STATUSES, "dest": Status.COMPLETED},
    {"trigger": "fail", "source": STARTED_STATUSES, "dest": Status.FAILED},
    {"trigger": "retry", "source": STARTED_STATUSES, "dest": Status.RETRYING},
    {"trigger": "kill", "source": SUPERVISED_STATUSES, "dest": Status.KILLED},
    {"trigger": "lose", "source": SUPERVISED_STATUSES, "dest": Status.LOST},
]


#: The trigger that ends a started task with each outcome, as the store records it.
ENDING_TRIGGERS = {
    Status.COMPLETED: "complete",
    Status.FAILED: "fail",
    Status.TIMEOUT: "time_out",
    Status.KILLED: "kill",
    Status.LOST: "lose",
    Status.EXPIRED: "expire",
}
#: The triggers by which the supervisor grades a started task.
GRADING_TRIGGERS = ("heartbeat", "tick")


def step(taskid: int, source: Status | str, trigger: str) -> set[Status]:
    """The statuses `trigger` may lead to from `source`; TransitionNotAllowed when none."""
    found = {
        Status(transition["dest"])
        for transition in TRANSITIONS
        if transition["trigger"] == trigger and source in sources_of(transition)
    }
    if not found:
        raise TransitionNotAllowed(f"task {taskid} is {source}: {trigger} is not allowed")
    return found


def graded_from(source: Status | str) -> set[Status]:
    """The started statuses grading can bring a task to from `source`, in any number of steps
    (a heartbeat and a tick between two writes of the row)."""
    reached = {Status(source)}
    while True:
        more = {
            Status(transition["dest"])
            for transition in TRANSITIONS
            if transition["trigger"] in GRADING_TRIGGERS
            and transition["dest"] in STARTED_STATUSES
            and reached & set(sources_of(transition))
        }
        if more <= reached:
            return reached & set(STARTED_STATUSES)
        reached |= more


def sources_of(transition: dict[str, Any]) -> tuple[Status, ...]:
    """The statuses a transition of the table leaves from."""
    source = transition["source"]
    return (source,) if isinstance(source, str) else tuple(source)
