"""The store on real sqlite files: reservations, start, status, archive, reads."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

from taskwatcher.engine import control
from taskwatcher.engine.errors import (
    InvalidRequest,
    LiveTasksExist,
    NotReserved,
    RowLost,
    StoreError,
    TransitionNotAllowed,
    UniqueConflict,
    UnknownTask,
)
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.records import Ended, Task
from taskwatcher.engine.settings import DEFAULT_RESERVATION_TTL
from taskwatcher.engine.sql_store import BATCH_RANGE, BATCH_ROWS, BATCH_SECONDS, next_batch_rows
from taskwatcher.engine.store import Store, open_store
from tests.helpers import HISTORY_KEYS, LIST_KEYS
from tests.store_helpers import TOKEN_HASH, claim, finish

T0 = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(backend_location, clock):
    with open_store(backend_location, clock=clock) as opened:
        yield opened


@pytest.fixture
def sqlite_store(db_path, clock):
    """For the tests that also open the file with sqlite3 itself."""
    with open_store(db_path, clock=clock) as opened:
        yield opened


def launch(store: Store, taskid: int, **overrides) -> None:
    """Start a reservation the way the supervisor does: claim it, then record its child."""
    fields = {
        "pid": 4242,
        "child_ctime": T0 - 1,
        "supervisor_pid": 4241,
        "supervisor_ctime": T0 - 2,
        "host": "box",
        "timeout": 30.0,
        "feedpath": "/tmp/feedback_1.log",
        "command": ["sleep", "a b"],
    }
    claim(store, taskid, **{**fields, **overrides})


def started(store: Store, name: str = "job", **overrides) -> int:
    taskid = store.reserve(name)
    launch(store, taskid, **overrides)
    return taskid


# -- reservation -------------------------------------------------------------------------


def test_location_is_the_absolute_path_of_the_database(sqlite_store, db_path, monkeypatch):
    assert sqlite_store.location == str(db_path)
    monkeypatch.chdir(db_path.parent)
    with open_store(db_path.name) as relative:
        assert relative.location == str(db_path)


def test_reserve_returns_new_ids(store):
    assert [store.reserve(), store.reserve("b"), store.reserve("b")] == [1, 2, 3]


def test_reserved_task_is_listed_without_timer(store, clock):
    taskid = store.reserve("nightly", info1="a", info2="b", info3="c")
    clock.now += 5
    (task,) = store.list_tasks()
    assert isinstance(task, Task) and task.taskid == taskid and task.started is False
    (record,) = control.listing(store)
    assert record == {**task.as_json(clock.now), "said": None}
    assert list(record)[: len(LIST_KEYS)] == LIST_KEYS
    assert record["taskid"] == taskid
    assert (record["name"], record["info1"], record["info2"], record["info3"]) == (
        "nightly",
        "a",
        "b",
        "c",
    )
    assert record["status"] == Status.RESERVED
    assert record["reservetime"] == T0
    assert record["timer"] is None and record["duration"] is None
    assert record["feedback"] is False and record["unique"] is False


def test_unique_reservation_refuses_a_second_holder(store):
    holder = store.reserve("nightly", unique=True)
    with pytest.raises(UniqueConflict) as conflict:
        store.reserve("nightly", unique=True)
    assert str(conflict.value) == f"name 'nightly' is held by live task {holder}"
    assert (conflict.value.name, conflict.value.holder) == ("nightly", holder)


def test_unique_holder_refuses_plain_reservations_of_its_name(store):
    holder = store.reserve("nightly", unique=True)
    with pytest.raises(UniqueConflict, match=f"live task {holder}"):
        store.reserve("nightly")
    assert store.live_count() == 1


def test_unique_reservation_refused_while_a_plain_task_has_the_name(store):
    plain = store.reserve("nightly")
    with pytest.raises(UniqueConflict, match=f"live task {plain}"):
        store.reserve("nightly", unique=True)


def test_plain_reservations_share_names(store):
    store.reserve("report")
    store.reserve("report")
    assert len(store.list_tasks(name="report")) == 2


def test_finished_unique_task_frees_its_name(store):
    holder = started(store, "nightly")
    finish(store, holder, Status.COMPLETED, exitcode=0)
    assert store.reserve("nightly", unique=True) > holder


def test_unique_reservation_needs_a_name(store):
    with pytest.raises(InvalidRequest):
        store.reserve(unique=True)


# -- expiry ------------------------------------------------------------------------------


@pytest.fixture
def short_ttl_store(backend_location, clock):
    with open_store(backend_location, clock=clock, reservation_ttl=100) as opened:
        yield opened


def test_default_ttl_is_an_hour():
    assert DEFAULT_RESERVATION_TTL == 3600


def test_reservation_expires_at_its_ttl_on_the_next_write(short_ttl_store, clock):
    taskid = short_ttl_store.reserve("late", info1="i")
    clock.now = T0 + 99.999
    short_ttl_store.reserve("other")
    assert short_ttl_store.get_task(taskid) is not None
    clock.now = T0 + 100
    short_ttl_store.reserve("other")
    assert short_ttl_store.get_task(taskid) is None
    record = short_ttl_store.history_of(taskid)
    assert isinstance(record, Ended)
    assert record.outcome == Status.EXPIRED
    assert (record.starttime, record.duration, record.endtime) == (None, 0, T0 + 100)
    assert record.info1 == "i" and record.feedback is None
    assert record.termerror is not None and "not launched within 100 s" in record.termerror


def test_reads_do_not_expire(short_ttl_store, clock):
    short_ttl_store.reserve("late")
    clock.now = T0 + 500
    assert short_ttl_store.live_count() == 1
    assert short_ttl_store.history() == []


def test_expire_reservations_returns_what_it_expired(short_ttl_store, clock):
    first = short_ttl_store.reserve("a")
    clock.now = T0 + 50
    second = short_ttl_store.reserve("b")
    clock.now = T0 + 120
    assert [record.taskid for record in short_ttl_store.expire_reservations()] == [first]
    assert short_ttl_store.expire_reservations() == []
    assert short_ttl_store.get_task(second) is not None


def test_started_tasks_never_expire(short_ttl_store, clock):
    taskid = started(short_ttl_store)
    clock.now = T0 + 10_000
    assert short_ttl_store.expire_reservations() == []
    assert short_ttl_store.get_task(taskid).status == Status.RUNNING


def test_expiry_frees_a_unique_name_for_the_same_write(short_ttl_store, clock):
    stale = short_ttl_store.reserve("nightly", unique=True)
    clock.now = T0 + 100
    fresh = short_ttl_store.reserve("nightly", unique=True)
    assert fresh > stale
    assert short_ttl_store.history_of(stale).outcome == Status.EXPIRED


def test_start_of_an_expired_reservation_says_so(short_ttl_store, clock):
    taskid = short_ttl_store.reserve("late")
    clock.now = T0 + 100
    with pytest.raises(UnknownTask, match=f"task {taskid} has already ended \\(EXPIRED\\)"):
        launch(short_ttl_store, taskid)


def test_cancelled_reservation_goes_to_history(store, clock):
    taskid = store.reserve("oops")
    clock.now += 3
    record = store.cancel_reservation(taskid, "alice")
    assert record.outcome == Status.EXPIRED
    assert record.killed_by == "alice"
    assert record.endtime == T0 + 3 and record.duration == 0
    assert store.live_count() == 0


def test_only_reservations_can_be_cancelled(store):
    taskid = started(store)
    with pytest.raises(NotReserved):
        store.cancel_reservation(taskid, "alice")
    with pytest.raises(UnknownTask):
        store.cancel_reservation(999, "alice")


# -- start -------------------------------------------------------------------------------


def test_start_records_the_launch(store, clock):
    taskid = store.reserve("job", info1="reserved")
    clock.now += 2
    launch(store, taskid, info2="given")
    row = store.get_task(taskid)
    assert row.status == Status.RUNNING
    assert (row.starttime, row.lastupdate, row.reservetime) == (T0 + 2, T0 + 2, T0)
    assert (row.name, row.info1, row.info2) == ("job", "reserved", "given")
    assert (row.pid, row.pgid, row.supervisor_pid, row.host) == (4242, 4242, 4241, "box")
    assert (row.child_ctime, row.supervisor_ctime) == (T0 - 1, T0 - 2)
    assert row.feedback is False and row.timeout == 30  # no feedback written yet
    assert row.command == ["sleep", "a b"]
    assert row.token_hash == TOKEN_HASH


def test_feedback_marks_the_task_as_one_that_wrote_some(store):
    taskid = started(store)
    store.heartbeat(taskid, TOKEN_HASH, T0 + 1)
    assert store.get_task(taskid).feedback is False  # a heartbeat alone is no feedback
    store.heartbeat(taskid, TOKEN_HASH, None, {"progress": "1"})
    row = store.get_task(taskid)
    assert (row.feedback, row.heartbeat) == (True, T0 + 1)  # no new heartbeat: kept
    assert store.load_feedback(taskid) == {"progress": "1"}


def test_start_names_an_anonymous_reservation(store):
    taskid = store.reserve()
    launch(store, taskid, name="from-command")
    assert store.get_task(taskid).name == "from-command"


def test_start_happens_once(store):
    taskid = started(store)
    with pytest.raises(NotReserved, match=f"task {taskid} is RUNNING, not RESERVED"):
        launch(store, taskid)


def test_start_of_an_unknown_task(store):
    with pytest.raises(UnknownTask, match="no task 41"):
        launch(store, 41)


def test_start_under_a_name_held_by_a_unique_task_is_refused(store):
    holder = store.reserve("nightly", unique=True)
    taskid = store.reserve("other")
    with pytest.raises(UniqueConflict, match=f"live task {holder}"):
        launch(store, taskid, name="nightly")
    assert store.get_task(taskid).status == Status.RESERVED


# -- running tasks -----------------------------------------------------------------------


def test_timer_counts_from_start_until_a_heartbeat(store, clock):
    taskid = started(store)
    clock.now += 12
    (record,) = control.listing(store)
    assert record["duration"] == 12 and record["timer"] == 12
    store.heartbeat(taskid, TOKEN_HASH, T0 + 10)
    clock.now += 1
    (record,) = control.listing(store)
    assert record["duration"] == 13 and record["timer"] == 3
    assert record["heartbeat"] == T0 + 10
    (task,) = store.list_tasks()
    assert {**task.as_json(clock.now), "said": None} == record


def test_heartbeat_never_goes_back(store):
    taskid = started(store)
    store.heartbeat(taskid, TOKEN_HASH, T0 + 10)
    store.heartbeat(taskid, TOKEN_HASH, T0 + 5)
    assert store.get_task(taskid).heartbeat == T0 + 10


def test_grade_records_a_grade(store, clock):
    taskid = started(store)
    clock.now += 9
    store.grade(taskid, TOKEN_HASH, Status.SILENT)
    row = store.get_task(taskid)
    assert (row.status, row.lastupdate) == (Status.SILENT, T0 + 9)
    assert store.list_tasks(status="SILENT")[0].taskid == taskid
    assert store.list_tasks(status="RUNNING") == []


@pytest.mark.parametrize("status", [Status.RESERVED, Status.COMPLETED, Status.EXPIRED])
def test_grade_refuses_non_grades(store, status):
    taskid = started(store)
    with pytest.raises(TransitionNotAllowed):
        store.grade(taskid, TOKEN_HASH, status)


def test_supervisor_writes_refuse_reservations_and_unknown_ids(store):
    """A reservation holds no token yet: no supervisor owns it, so none may write it."""
    reserved = store.reserve("r")
    with pytest.raises(RowLost):
        store.grade(reserved, TOKEN_HASH, Status.SILENT)
    with pytest.raises(RowLost):
        store.heartbeat(reserved, TOKEN_HASH, T0)
    with pytest.raises(RowLost):
        store.set_child(reserved, TOKEN_HASH, 4242, T0)
    with pytest.raises(RowLost):
        store.kill_request(reserved, TOKEN_HASH)
    with pytest.raises(RowLost):
        store.grade(999, TOKEN_HASH, Status.SILENT)
    assert store.get_task(reserved).status == Status.RESERVED


def test_supervisor_writes_refuse_another_token(store):
    taskid = started(store)
    other = "f" * 64
    with pytest.raises(RowLost):
        store.grade(taskid, other, Status.SILENT)
    with pytest.raises(RowLost):
        store.heartbeat(taskid, other, T0 + 5, {"progress": "1"})
    with pytest.raises(RowLost):
        store.kill_request(taskid, other)
    with pytest.raises(RowLost):
        finish(store, taskid, Status.COMPLETED, token_hash=other)
    row = store.get_task(taskid)
    assert (row.status, row.heartbeat) == (Status.RUNNING, None)
    assert store.load_feedback(taskid) == {}
    assert finish(store, taskid, Status.COMPLETED, token_hash=TOKEN_HASH).taskid == taskid


def test_kill_request_remembers_the_first_requester(store, clock):
    taskid = started(store)
    assert store.kill_request(taskid, TOKEN_HASH) is None
    record = store.request_kill(taskid, "alice")
    assert (record.kill_request, record.kill_requested_at) == ("alice", T0)
    clock.now += 1
    store.request_kill(taskid, "bob")
    assert store.get_task(taskid).kill_request == "alice"
    assert store.kill_request(taskid, TOKEN_HASH) == "alice"
    archived = finish(store, taskid, Status.KILLED, termsignal="SIGTERM", token_hash=TOKEN_HASH)
    assert archived.killed_by == "alice"


def test_kill_request_on_a_reservation_points_to_cancel(store):
    taskid = store.reserve()
    with pytest.raises(TransitionNotAllowed, match="cancel the reservation"):
        store.request_kill(taskid, "alice")


# -- feedback ----------------------------------------------------------------------------


def test_feedback_round_trip(store):
    taskid = started(store)
    assert store.load_feedback(taskid) == {}
    store.heartbeat(taskid, TOKEN_HASH, T0, feedback={"progress": "10"})
    assert store.load_feedback(taskid) == {"progress": "10"}
    store.heartbeat(taskid, TOKEN_HASH, T0 + 1, {"progress": "20"})
    assert store.load_feedback(taskid) == {"progress": "20"}
    assert store.live_feedback() == {taskid: {"progress": "20"}}


def test_feedback_of_unknown_task(store):
    with pytest.raises(UnknownTask):
        store.load_feedback(5)
    with pytest.raises(RowLost):
        store.heartbeat(5, TOKEN_HASH, T0, feedback={})
    assert store.live_feedback() == {}


# -- archive and history -----------------------------------------------------------------


def test_archive_moves_the_task_to_history(store, clock):
    taskid = started(store, info3="x")
    store.heartbeat(taskid, TOKEN_HASH, T0, feedback={"progress": "50"})
    clock.now += 40
    record = finish(
        store,
        taskid,
        Status.FAILED,
        exitcode=3,
        termerror="exit status 3",
        feedback={"a": "1"},
        token_hash=TOKEN_HASH,
    )
    assert list(record.as_json())[: len(HISTORY_KEYS)] == HISTORY_KEYS
    assert record.taskid == taskid and record.taskname == "job"
    assert (record.outcome, record.exitcode, record.termerror) == ("FAILED", 3, "exit status 3")
    assert (record.starttime, record.endtime, record.duration) == (T0, T0 + 40, 40)
    assert record.feedback == {"a": "1"}
    assert record.command == ["sleep", "a b"] and record.timeout == 30.0
    assert (record.host, record.pid, record.reservetime) == ("box", 4242, T0)
    assert store.get_task(taskid) is None
    assert store.history() == [record]
    assert list(control.history_listing(store)) == [record.as_json()]
    with pytest.raises(UnknownTask, match="already ended \\(FAILED\\)"):
        store.load_feedback(taskid)


def test_archive_keeps_the_last_saved_feedback_by_default(store):
    taskid = started(store)
    store.heartbeat(taskid, TOKEN_HASH, T0, feedback={"progress": "99"})
    assert finish(store, taskid, Status.COMPLETED).feedback == {"progress": "99"}


def test_archive_without_published_feedback_keeps_null(store):
    taskid = started(store)
    assert finish(store, taskid, Status.COMPLETED).feedback is None


def test_archive_takes_an_explicit_end_time(store):
    taskid = started(store)
    assert finish(store, taskid, "LOST", endtime=T0 + 7).endtime == T0 + 7


def test_archive_refuses_live_statuses_and_unknown_tasks(store):
    taskid = started(store)
    with pytest.raises(TransitionNotAllowed):
        finish(store, taskid, Status.RUNNING)
    with pytest.raises(InvalidRequest, match="unknown status 'DONE'"):
        finish(store, taskid, "DONE")
    with pytest.raises(UnknownTask):
        finish(store, 999, Status.COMPLETED)
    assert store.get_task(taskid).status == Status.RUNNING


def test_archive_is_one_transaction(sqlite_store, db_path):
    """If the history row cannot be written, the task stays live with its feedback."""
    taskid = started(sqlite_store)
    sqlite_store.heartbeat(taskid, TOKEN_HASH, T0, feedback={"k": "v"})
    with sqlite3.connect(db_path) as other:
        other.execute(
            "INSERT INTO history (taskid, endtime, duration, feedback, outcome)"
            " VALUES (?, 0, 0, '{}', 'LOST')",
            (taskid,),
        )
    with pytest.raises(StoreError, match="UNIQUE constraint failed"):
        finish(sqlite_store, taskid, Status.COMPLETED, token_hash=TOKEN_HASH)
    assert sqlite_store.get_task(taskid).status == Status.RUNNING
    assert sqlite_store.load_feedback(taskid) == {"k": "v"}


def test_task_ids_are_never_reused(sqlite_store, db_path):
    first = started(sqlite_store)
    finish(sqlite_store, first, Status.COMPLETED)
    second = sqlite_store.reserve()
    sqlite_store.cancel_reservation(second, "me")
    sqlite_store.close()
    with open_store(db_path) as reopened:
        assert reopened.reserve() == second + 1


def test_history_newest_first_with_filters(store, clock):
    ends = {}
    for name, outcome, end in [
        ("a", "COMPLETED", 10),
        ("b", "FAILED", 20),
        ("a", "FAILED", 30),
        ("a", "COMPLETED", 30),
    ]:
        taskid = started(store, name)
        ends[taskid] = end
        finish(store, taskid, outcome, endtime=T0 + end)

    def ids(**filters):
        return [record.taskid for record in store.history(**filters)]

    assert ids() == [4, 3, 2, 1]  # equal end times: the later archive first
    assert ids(name="a") == [4, 3, 1]
    assert ids(outcome="FAILED") == [3, 2]
    assert ids(since=T0 + 20) == [4, 3, 2]
    assert ids(before=T0 + 30) == [2, 1]
    assert ids(name="a", outcome="COMPLETED", limit=1) == [4]
    assert ids(name="nobody") == []


def test_history_of(store):
    taskid = started(store)
    assert store.history_of(taskid) is None
    finish(store, taskid, Status.TIMEOUT, exitcode=124)
    assert store.history_of(taskid).outcome == Status.TIMEOUT


def test_clear_history(store):
    for end in (10, 20, 30):
        finish(store, started(store), Status.COMPLETED, endtime=T0 + end)
    assert store.clear_history(before=T0 + 25) == 2
    assert [r.endtime for r in store.history()] == [T0 + 30]
    assert store.clear_history() == 1
    assert store.history() == []


def test_records_are_ready_for_json(store):
    taskid = started(store)
    store.reserve("waiting")
    finish(store, taskid, Status.COMPLETED, feedback={"progress": "100"})
    started(store)
    listed = control.listing(store)
    assert orjson.loads(orjson.dumps(listed)) == listed
    assert listed[0]["status"] == "RESERVED"
    ended = list(control.history_listing(store))
    assert orjson.loads(orjson.dumps(ended)) == ended
    assert ended[0]["feedback"] == {"progress": "100"}


def test_list_filters_by_name(store):
    store.reserve("a")
    started(store, "b")
    assert [r.name for r in store.list_tasks(name="b")] == ["b"]
    assert store.live_count() == 2


def test_list_of_started_tasks_leaves_reservations_out(store):
    store.reserve("waiting")
    running = started(store, "running")
    assert [(task.taskid, task.status) for task in store.list_tasks(started=True)] == [
        (running, "RUNNING")
    ]


def test_reinitialize_empties_everything(store):
    finish(store, started(store), Status.COMPLETED)
    store.reserve("a")
    store.reinitialize()
    assert store.live_count() == 0 and store.history() == []


def test_database_trouble_mid_command_is_a_store_error(sqlite_store, db_path):
    with sqlite3.connect(db_path) as other:
        other.execute("DROP TABLE feedbacks")
    taskid = started(sqlite_store)
    with pytest.raises(StoreError, match="no such table: feedbacks"):
        sqlite_store.load_feedback(taskid)


def test_reinitialize_never_reuses_task_ids(db_path):
    with open_store(db_path) as store:
        first = store.reserve("before")
        store.reinitialize()
        assert store.list_tasks() == []
        assert store.reserve("after") == first + 1


def test_final_feedback_is_null_only_for_tasks_that_published_none(store):
    quiet = started(store, "quiet")
    finish(store, quiet, Status.COMPLETED)
    silent = started(store, "silent")
    finish(store, silent, Status.COMPLETED)
    talker = started(store, "talker")
    # a file with only comments: feedback, but no values
    store.heartbeat(talker, TOKEN_HASH, T0, feedback={})
    finish(store, talker, Status.COMPLETED)
    assert store.history_of(quiet).feedback is None
    assert store.history_of(silent).feedback is None
    assert store.history_of(talker).feedback == {}


# -- bulk changes ------------------------------------------------------------------------


def fill_history(db_path, rows: int) -> None:
    """A large history, written fast with plain sqlite3 (the store's schema already there)."""
    with sqlite3.connect(db_path) as raw:
        raw.executemany(
            "INSERT INTO history (taskid, endtime, duration, feedback, outcome)"
            " VALUES (?, ?, 0, 'null', 'COMPLETED')",
            ((taskid, float(taskid)) for taskid in range(1, rows + 1)),
        )


def test_clear_goes_in_batches_and_says_how_far_it_got(sqlite_store, db_path):
    fill_history(db_path, 2500)
    seen = []
    assert sqlite_store.clear_history(before=2001.0, progress=seen.append) == 2000
    assert seen[0] == BATCH_ROWS and seen[-1] == 2000 and seen == sorted(set(seen))
    assert len(sqlite_store.history()) == 500
    assert sqlite_store.clear_history() == 500


@pytest.mark.parametrize(
    ("rows", "held", "expected"),
    [
        (1000, BATCH_SECONDS, 1000),  # on target: the same again
        (1000, BATCH_SECONDS / 2, 2000),  # twice as fast as wanted: twice the rows
        (1000, 0.0, 4000),  # suspiciously quick: at most four times as many
        (1000, BATCH_SECONDS * 4, 250),  # a loaded machine: fewer rows, the lock held less
        (BATCH_RANGE[1], 0.0, BATCH_RANGE[1]),
        (BATCH_RANGE[0], 60.0, BATCH_RANGE[0]),
    ],
)
def test_a_clear_sizes_each_batch_by_how_long_the_last_held_the_lock(rows, held, expected):
    assert next_batch_rows(rows, held) == expected


def test_many_stale_reservations_expire_in_batches(db_path):
    with open_store(db_path, reservation_ttl=1.0) as store:
        with sqlite3.connect(db_path) as raw:
            raw.executemany(
                "INSERT INTO tasks (name, reservetime, lastupdate) VALUES ('old', 0, 0)",
                [()] * 2100,
            )
        assert len(store.expire_reservations()) == 2100
        assert store.live_count() == 0


def test_reinitialize_with_live_tasks_is_refused_unless_forced(store):
    """The engine says what would be lost; naming the option that forces it is the CLI's."""
    store.reserve("live")
    with pytest.raises(LiveTasksExist) as refused:
        control.reinitialize(store)
    assert str(refused.value) == "1 live task(s) in the database would be dropped"
    assert store.live_count() == 1
    control.reinitialize(store, force=True)
    assert store.live_count() == 0
