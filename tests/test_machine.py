"""The task state machine: guard boundaries, the transition table, deadlines, the diagram."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transitions import Machine, MachineError

from taskwatcher.engine.diagram import diagram_edges
from taskwatcher.engine.errors import TransitionNotAllowed
from taskwatcher.engine.lifecycle import FINAL_STATUSES, LIVE_STATUSES, TRANSITIONS, Status, health
from taskwatcher.engine.machine import TaskState

START = 1000.0
TIMEOUT = 100.0


@pytest.fixture
def task():
    """A started task with a timeout."""
    state = TaskState(7, TIMEOUT)
    state.start(START)
    return state


def at(fraction: float) -> float:
    """The clock reading when the heartbeat age is `fraction` of the timeout."""
    return START + fraction * TIMEOUT


@pytest.mark.parametrize(
    ("fraction", "grade"),
    [
        (0.0, Status.RUNNING),
        (0.2499, Status.RUNNING),
        (0.25, Status.SILENT),
        (0.4999, Status.SILENT),
        (0.5, Status.STALLED),
        (0.75, Status.STALLED),
        (0.9999, Status.STALLED),
        (1.0, Status.TIMEOUT),
        (7.0, Status.TIMEOUT),
    ],
)
def test_health_thresholds(fraction, grade):
    assert health(fraction) is grade


@pytest.mark.parametrize(
    ("fraction", "state"),
    [
        (0.2499, Status.RUNNING),
        (0.25, Status.SILENT),
        (0.4999, Status.SILENT),
        (0.5, Status.STALLED),
        (0.9999, Status.STALLED),
        (1.0, Status.TIMEOUT),
    ],
)
def test_tick_grades_from_a_running_task(task, fraction, state):
    changed = task.tick(at(fraction))
    assert task.state is state
    assert changed is (state is not Status.RUNNING)


def test_tick_walks_through_every_grade(task):
    assert [task.tick(at(f)) for f in (0.1, 0.3, 0.4, 0.6, 0.9, 1.0)] == [
        False,
        True,
        False,
        True,
        False,
        True,
    ]
    assert task.state is Status.TIMEOUT


def test_silent_task_goes_stalled_then_timeout(task):
    task.tick(at(0.3))
    assert task.tick(at(0.5)) and task.state is Status.STALLED
    assert task.tick(at(1.0)) and task.state is Status.TIMEOUT


@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_heartbeat_brings_a_quiet_task_back_to_running(task, fraction):
    task.tick(at(fraction))
    assert task.state is not Status.RUNNING
    task.heartbeat(at(fraction))
    assert task.state is Status.RUNNING
    assert not task.tick(at(fraction + 0.2499))
    assert task.tick(at(fraction + 0.25)) and task.state is Status.SILENT


def test_heartbeat_on_a_running_task_restarts_its_clock(task):
    task.heartbeat(at(0.2))
    assert not task.tick(at(0.4499))
    assert task.state is Status.RUNNING


def test_an_older_heartbeat_never_ages_the_task(task):
    task.heartbeat(START - 10 * TIMEOUT)  # a leftover feedback file's mtime
    assert task.last_heartbeat == START
    assert not task.tick(at(0.2))


def test_every_task_with_a_timeout_is_graded_whatever_gives_its_heartbeats():
    """Grading depends on the heartbeat's age alone, not on where heartbeats come from."""
    task = TaskState(1, TIMEOUT)
    task.start(START)
    assert task.next_deadline(at(0.1)) == at(0.25)
    assert task.tick(at(0.3)) and task.state is Status.SILENT
    assert task.heartbeat(at(0.4)) and task.state is Status.RUNNING
    assert task.tick(at(1.4)) and task.state is Status.TIMEOUT


@pytest.mark.parametrize("timeout", [None, 0])
def test_task_without_timeout_runs_forever(timeout):
    task = TaskState(1, timeout)
    task.start(START)
    assert not task.tick(START + 1e9)
    assert task.state is Status.RUNNING
    assert task.next_deadline(START) is None


def test_negative_timeout_is_refused():
    with pytest.raises(ValueError, match="negative"):
        TaskState(1, -1.0)


# -- the table ---------------------------------------------------------------------------

TRIGGER_ARGS = {
    "start": (START,),
    "heartbeat": (START,),
    "tick": (START,),
    "time_out": (),
    "complete": (),
    "fail": (),
    "retry": (),
    "kill": (),
    "lose": (),
    "expire": (),
}
STARTED = {Status.RUNNING, Status.SILENT, Status.STALLED}
#: (source, trigger) -> destination, written out independently of the module's table.
ALLOWED = {
    (Status.RESERVED, "start"): Status.RUNNING,
    (Status.RETRYING, "start"): Status.RUNNING,
    (Status.RETRYING, "kill"): Status.KILLED,
    (Status.RETRYING, "lose"): Status.LOST,
    **{(source, "retry"): Status.RETRYING for source in STARTED},
    (Status.RESERVED, "expire"): Status.EXPIRED,
    **{(source, "heartbeat"): Status.RUNNING for source in STARTED},
    **{(source, "tick"): source for source in STARTED},  # heartbeat age 0: no change
    **{(source, "time_out"): Status.TIMEOUT for source in STARTED},
    **{(source, "complete"): Status.COMPLETED for source in STARTED},
    **{(source, "fail"): Status.FAILED for source in STARTED},
    **{(source, "kill"): Status.KILLED for source in STARTED},
    **{(source, "lose"): Status.LOST for source in STARTED},
}


def test_status_sets():
    assert {Status.RESERVED, *STARTED, Status.RETRYING} == LIVE_STATUSES
    assert {"COMPLETED", "FAILED", "TIMEOUT", "KILLED", "LOST", "EXPIRED"} == FINAL_STATUSES
    assert not LIVE_STATUSES & FINAL_STATUSES


def test_table_triggers_are_the_ones_tested():
    assert {transition["trigger"] for transition in TRANSITIONS} == set(TRIGGER_ARGS)


@pytest.mark.parametrize("source", list(Status))
@pytest.mark.parametrize("trigger", list(TRIGGER_ARGS))
def test_every_trigger_from_every_state(source, trigger):
    task = TaskState(3, TIMEOUT, state=source, started_at=START)
    expected = ALLOWED.get((source, trigger))
    if expected is None:
        with pytest.raises(TransitionNotAllowed, match=f"task 3 is {source}: {trigger}"):
            getattr(task, trigger)(*TRIGGER_ARGS[trigger])
        assert task.state is source
    else:
        getattr(task, trigger)(*TRIGGER_ARGS[trigger])
        assert task.state is expected


def test_reserved_cannot_jump_to_a_grade():
    task = TaskState(3, TIMEOUT)
    with pytest.raises(TransitionNotAllowed):
        task.tick(START + 10 * TIMEOUT)


class _Reference:
    """TaskState's data, guards and callbacks, driven by a real `transitions` machine."""

    age_fraction = TaskState.age_fraction
    grade = TaskState.grade
    mark_start = TaskState.mark_start
    mark_heartbeat = TaskState.mark_heartbeat
    grades_silent = TaskState.grades_silent
    grades_stalled = TaskState.grades_stalled
    grades_timeout = TaskState.grades_timeout

    def __init__(self, timeout: float) -> None:
        self.timeout, self.started_at, self.last_heartbeat = timeout, None, None
        Machine(
            model=self,
            states=[{"name": status, "final": status in FINAL_STATUSES} for status in Status],
            transitions=TRANSITIONS,
            initial=Status.RESERVED,
            auto_transitions=False,
        )


@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(TRIGGER_ARGS)), st.floats(0, 1.5 * TIMEOUT)),
        max_size=30,
    )
)
def test_the_model_runs_the_table_as_a_transitions_machine_does(steps):
    """Same results, same refusals, same states and clocks, for any sequence of triggers."""
    ours, reference = TaskState(1, TIMEOUT), _Reference(TIMEOUT)
    now = START
    for trigger, pause in steps:
        now += pause
        args = (now,) if TRIGGER_ARGS[trigger] else ()
        try:
            expected = getattr(reference, trigger)(*args)
        except MachineError:
            with pytest.raises(TransitionNotAllowed):
                getattr(ours, trigger)(*args)
        else:
            assert getattr(ours, trigger)(*args) == expected
        assert ours.state == reference.state
        assert (ours.started_at, ours.last_heartbeat) == (
            reference.started_at,
            reference.last_heartbeat,
        )
        assert ours.may_tick(now) == reference.may_tick(now)


def test_no_automatic_to_state_triggers():
    task = TaskState(3)
    assert not hasattr(task, "to_SILENT")


def test_may_tick_is_pure(task):
    assert task.may_tick(at(0.3))
    assert task.state is Status.RUNNING


def test_next_deadline_follows_the_thresholds(task):
    assert task.next_deadline(START) == at(0.25)
    task.tick(at(0.25))
    assert task.next_deadline(at(0.25)) == at(0.5)
    task.tick(at(0.5))
    assert task.next_deadline(at(0.5)) == at(1.0)
    task.tick(at(1.0))
    assert task.next_deadline(at(1.0)) is None


def test_an_overdue_tick_is_due_now(task):
    """Busy past a crossing, the supervisor must tick at once, not sleep until the next one."""
    assert task.next_deadline(at(0.3)) == at(0.3)
    task.tick(at(0.3))
    assert task.state is Status.SILENT
    assert task.next_deadline(at(0.3)) == at(0.5)


def test_next_deadline_moves_with_a_heartbeat(task):
    task.tick(at(0.3))
    task.heartbeat(at(0.3))
    assert task.next_deadline(at(0.3)) == at(0.55)


def test_next_deadline_is_none_before_start_and_after_the_end():
    task = TaskState(1, TIMEOUT)
    assert task.next_deadline(START) is None
    task.start(START)
    task.complete()
    assert task.next_deadline(START) is None


@given(
    start=st.floats(min_value=0, max_value=4e9),
    timeout=st.floats(min_value=1e-3, max_value=1e6),
)
def test_ticking_at_the_deadline_always_changes_the_state(start, timeout):
    """No rounding gap: the deadline is never a moment when nothing happens yet."""
    task = TaskState(1, timeout)
    task.start(start)
    now = start
    while (deadline := task.next_deadline(now)) is not None:
        assert not task.may_tick(math.nextafter(deadline, -math.inf))
        assert task.tick(deadline)
        now = deadline
    assert task.state is Status.TIMEOUT


# -- diagram -----------------------------------------------------------------------------


def test_diagram_draws_every_transition():
    drawn = {(dest, label.split()[0]) for _, dest, label in diagram_edges()}
    assert drawn == {(str(row["dest"]), row["trigger"]) for row in TRANSITIONS}


def run_module(flag: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "taskwatcher.engine.diagram", flag],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_dot_output_lists_states_and_guarded_edges():
    dot = run_module("--dot")
    assert dot.startswith("digraph taskwatcher {") and dot.rstrip().endswith("}")
    for status in Status:
        assert str(status) in dot
    assert 'RUNNING -> SILENT [label="tick when 0.25 ≤ f < 0.5"]' in dot
    assert 'RUNNING -> TIMEOUT [label="tick when f ≥ 1", ltail=cluster_started]' in dot


def test_mermaid_output_is_a_state_diagram():
    mermaid = run_module("--mermaid")
    assert mermaid.startswith("stateDiagram-v2\n")
    assert "    RESERVED --> started : start" in mermaid
    assert "        SILENT --> STALLED : tick when 0.5 ≤ f < 1" in mermaid
    for status in FINAL_STATUSES:
        assert f"class {status} final" in mermaid
