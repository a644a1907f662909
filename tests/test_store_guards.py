"""The store refuses every change of status the life-cycle table does not allow.

The cases are generated from the table: each recorded status against each way to end a task
and each grade, allowed exactly when the table says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from taskwatcher.engine.errors import RowLost, TransitionNotAllowed
from taskwatcher.engine.lifecycle import (
    ENDING_TRIGGERS,
    FINAL_STATUSES,
    LIVE_STATUSES,
    STARTED_STATUSES,
    TRANSITIONS,
    Status,
)
from taskwatcher.engine.records import Ending
from taskwatcher.engine.store import Store, open_store
from tests.store_helpers import TOKEN_HASH, claim, finish


def table_allows(source: Status, trigger: str, dest: Status) -> bool:
    """Read straight from the table: some row with this trigger leads from source to dest."""
    for transition in TRANSITIONS:
        sources = transition["source"]
        sources = [sources] if isinstance(sources, str) else sources
        if transition["trigger"] == trigger and source in sources and transition["dest"] == dest:
            return True
    return False


def task_in(store: Store, status: Status) -> int:
    """A task recorded in `status`, reached the way a supervisor reaches it."""
    taskid = store.reserve("guarded")
    if status != Status.RESERVED:
        claim(store, taskid, timeout=10, attempts=2)
    if status == Status.RETRYING:  # its first attempt failed, the second is to come
        store.retry(taskid, TOKEN_HASH, Ending(Status.FAILED, exitcode=1), store.now() + 60)
    elif status == Status.STALLED:
        store.grade(taskid, TOKEN_HASH, Status.STALLED)
    elif status == Status.SILENT:
        store.grade(taskid, TOKEN_HASH, Status.SILENT)
    return taskid


def end(store: Store, taskid: int, outcome: Status) -> None:
    """End the task as its supervisor would, or housekeeping for a reservation."""
    if outcome == Status.EXPIRED:
        store.cancel_reservation(taskid, "test")
    else:
        task = store.get_task(taskid)
        assert task is not None
        finish(store, taskid, outcome, token_hash=task.token_hash)


@pytest.mark.parametrize("outcome", sorted(FINAL_STATUSES))
@pytest.mark.parametrize("source", sorted(LIVE_STATUSES))
def test_an_end_is_recorded_only_where_the_table_allows_it(
    db_path: Path, source: Status, outcome: Status
) -> None:
    with open_store(db_path) as store:
        taskid = task_in(store, source)
        if table_allows(source, ENDING_TRIGGERS[outcome], outcome):
            end(store, taskid, outcome)
            assert store.history_of(taskid).outcome == outcome
        else:
            with pytest.raises(TransitionNotAllowed):
                end(store, taskid, outcome)
            assert store.get_task(taskid).status == source  # the same transaction refused it


@pytest.mark.parametrize("dest", sorted(LIVE_STATUSES))
@pytest.mark.parametrize("source", sorted(LIVE_STATUSES))
def test_a_grade_is_recorded_only_where_heartbeats_and_ticks_lead(
    db_path: Path, source: Status, dest: Status
) -> None:
    """Between two writes a supervisor may see a heartbeat and a tick: any started status
    may follow a started one, never a reservation, nor a started one a reservation.

    A reservation has no supervisor yet: no token is its own, so nobody may grade it.
    """
    with open_store(db_path) as store:
        taskid = task_in(store, source)
        if source in STARTED_STATUSES and dest in STARTED_STATUSES:  # never RETRYING
            store.grade(taskid, TOKEN_HASH, dest)
            assert store.get_task(taskid).status == dest
        else:
            refusal = RowLost if source == Status.RESERVED else TransitionNotAllowed
            with pytest.raises(refusal):
                store.grade(taskid, TOKEN_HASH, dest)
            assert store.get_task(taskid).status == source


def test_the_table_has_what_the_cases_rely_on() -> None:
    """Guard the generated cases against a table that allows everything or nothing."""
    assert table_allows(Status.RUNNING, "complete", Status.COMPLETED)
    assert not table_allows(Status.RESERVED, "complete", Status.COMPLETED)
    assert table_allows(Status.RESERVED, "expire", Status.EXPIRED)
    assert not table_allows(Status.RUNNING, "expire", Status.EXPIRED)
