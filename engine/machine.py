"""The task life cycle: one `transitions` table, one Machine, one model per task.

The table (TRANSITIONS) is the whole behaviour; guards grade the heartbeat age with the
DESIGN.md thresholds. Nothing here reads a clock or starts a timer: every time-dependent
trigger takes `now`, so the supervisor decides when to look and tests inject time.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from transitions import Event, Machine, MachineError

from taskwatcher.engine.errors import TransitionNotAllowed


class Status(StrEnum):
    """Every state a task can be in; the first four are live, the rest are final outcomes."""

    RESERVED = "RESERVED"
    RUNNING = "RUNNING"
    SILENT = "SILENT"
    STALLED = "STALLED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    KILLED = "KILLED"
    LOST = "LOST"
    EXPIRED = "EXPIRED"


#: Started and alive: graded by heartbeat age.
STARTED_STATUSES = (Status.RUNNING, Status.SILENT, Status.STALLED)
LIVE_STATUSES = frozenset({Status.RESERVED, *STARTED_STATUSES})
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
    {"trigger": "start", "source": Status.RESERVED, "dest": Status.RUNNING, "before": "mark_start"},
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
    {"trigger": "kill", "source": STARTED_STATUSES, "dest": Status.KILLED},
    {"trigger": "lose", "source": STARTED_STATUSES, "dest": Status.LOST},
]


def _grade_is(status: Status) -> Callable[[TaskState, float], bool]:
    """Build the tick guard for one grade; it only reads the model, so `may_tick` stays pure."""

    def guard(task: TaskState, now: float) -> bool:
        return task.grade(now) is status

    guard.__doc__ = f"Whether the heartbeat age at `now` grades the task {status}."
    return guard


class TaskState:
    """One task's life, a model of the shared MACHINE; the triggers below are bound by it.

    Each trigger returns True when a transition ran; `tick` has no self-loops, so its result
    says whether the state changed. A trigger the table forbids raises TransitionNotAllowed.
    """

    state: Status
    start: Callable[[float], bool]
    heartbeat: Callable[[float], bool]
    tick: Callable[[float], bool]
    time_out: Callable[[], bool]
    complete: Callable[[], bool]
    fail: Callable[[], bool]
    kill: Callable[[], bool]
    lose: Callable[[], bool]
    expire: Callable[[], bool]

    def __init__(
        self,
        taskid: int,
        timeout: float | None = None,
        has_feedback: bool = False,
        *,
        state: Status = Status.RESERVED,
        started_at: float | None = None,
        last_heartbeat: float | None = None,
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout cannot be negative: {timeout}")
        self.taskid = taskid
        self.timeout = timeout or None  # 0 disables the timeout, as with timeout(1)
        self.has_feedback = has_feedback
        self.started_at = started_at
        self.last_heartbeat = last_heartbeat if last_heartbeat is not None else started_at
        MACHINE.add_model(self, initial=state)

    def __repr__(self) -> str:
        return f"TaskState({self.taskid}, {self.state})"

    def __enter__(self) -> TaskState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        release(self)

    def mark_start(self, now: float) -> None:
        """The heartbeat clock starts at launch, before any feedback file exists."""
        self.started_at = now
        self.last_heartbeat = now

    def mark_heartbeat(self, when: float) -> None:
        """Never move the heartbeat back: a stale feedback file must not age a fresh task."""
        self.last_heartbeat = (
            when if self.last_heartbeat is None else max(self.last_heartbeat, when)
        )

    def age_fraction(self, now: float) -> float:
        """Heartbeat age as a fraction of the timeout; 0 when there is no timeout."""
        if self.timeout is None or self.last_heartbeat is None:
            return 0.0
        return (now - self.last_heartbeat) / self.timeout

    def grade(self, now: float) -> Status:
        """The health `now`; a task without feedback is RUNNING until its timeout runs out."""
        graded = health(self.age_fraction(now))
        if not self.has_feedback and graded is not Status.TIMEOUT:
            return Status.RUNNING
        return graded

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


def release(task: TaskState) -> None:
    """Detach a finished task from the shared machine so it can be garbage collected."""
    MACHINE.remove_model(task)


class _StrictEvent(Event):
    """A transitions Event that reports a trigger the table forbids as the engine's own error."""

    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        try:
            return super().trigger(model, *args, **kwargs)
        except MachineError as error:
            raise TransitionNotAllowed(
                f"task {model.taskid} is {model.state}: {self.name} is not allowed"
            ) from error


class _TaskMachine(Machine):
    event_cls = _StrictEvent


MACHINE = _TaskMachine(
    model=None,
    states=Status,
    transitions=TRANSITIONS,
    initial=Status.RESERVED,
    auto_transitions=False,
)


# -- diagram, generated from TRANSITIONS so the README never drifts from the code ------------

GROUP = "started"
GROUP_LABEL = "graded by heartbeat age f = (now - last heartbeat) / timeout"
NO_FEEDBACK_NOTE = "a task without feedback stays RUNNING until f ≥ 1"


def _band(status: Status) -> str:
    """The heartbeat-age band that `health` maps to `status`, for edge labels."""
    lower = next(threshold for threshold, graded in THRESHOLDS if graded is status)
    upper = next((threshold for threshold, _ in THRESHOLDS if threshold > lower), None)
    return f"f ≥ {lower:g}" if upper is None else f"{lower:g} ≤ f < {upper:g}"


def diagram_edges() -> list[tuple[str, str, str]]:
    """(source, dest, label) per drawn edge; a trigger allowed from every started state and
    leaving them is drawn once, from the group."""
    edges = []
    for transition in TRANSITIONS:
        sources = transition["source"]
        sources = [sources] if isinstance(sources, Status) else list(sources)
        dest = transition["dest"]
        label = transition["trigger"]
        if "conditions" in transition:
            label = f"{label} when {_band(dest)}"
        if set(sources) == set(STARTED_STATUSES) and dest not in STARTED_STATUSES:
            sources = [GROUP]
        edges.extend((str(source), str(dest), label) for source in sources)
    return edges


def to_dot() -> str:
    """Graphviz DOT: the started states in one cluster, final states double-circled."""
    cluster = "cluster_" + GROUP
    lines = [
        "digraph taskwatcher {",
        "    rankdir=LR;",
        "    compound=true;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        f"    {Status.RESERVED};",
        f"    subgraph {cluster} {{",
        f'        label="{GROUP}: {GROUP_LABEL}\\n{NO_FEEDBACK_NOTE}";',
        *(f"        {status};" for status in STARTED_STATUSES),
        "    }",
        *(f"    {status} [shape=doublecircle];" for status in Status if status in FINAL_STATUSES),
    ]
    for source, dest, label in diagram_edges():
        if source == GROUP:
            lines.append(f'    {STARTED_STATUSES[0]} -> {dest} [label="{label}", ltail={cluster}];')
        else:
            lines.append(f'    {source} -> {dest} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid() -> str:
    """Mermaid stateDiagram-v2 (GitHub renders it): the started states as a composite state."""
    inside, outside = [], []
    for source, dest, label in diagram_edges():
        if source in STARTED_STATUSES:
            inside.append(f"        {source} --> {dest} : {label}")
        elif dest in STARTED_STATUSES:
            inside.insert(0, f"        [*] --> {dest}")
            outside.append(f"    {source} --> {GROUP} : {label}")
        else:
            outside.append(f"    {source} --> {dest} : {label}")
    finals = [status for status in Status if status in FINAL_STATUSES]
    return (
        "\n".join(
            [
                "stateDiagram-v2",
                "    direction LR",
                f"    [*] --> {Status.RESERVED}",
                f"    state {GROUP} {{",
                *inside,
                "    }",
                f"    note right of {GROUP}",
                f"        {GROUP_LABEL}",
                f"        {NO_FEEDBACK_NOTE}",
                "    end note",
                *outside,
                "    classDef final stroke-width:3px",
                *(f"    class {status} final" for status in finals),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    """Print the state diagram, generated from the transitions table."""
    parser = argparse.ArgumentParser(
        prog="python -m taskwatcher.engine.machine", description=main.__doc__
    )
    formats = parser.add_mutually_exclusive_group(required=True)
    formats.add_argument("--dot", action="store_const", const=to_dot, dest="render")
    formats.add_argument("--mermaid", action="store_const", const=to_mermaid, dest="render")
    print(parser.parse_args(argv).render(), end="")


if __name__ == "__main__":
    main()
