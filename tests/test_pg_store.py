"""The PostgreSQL store on a real server: selection by URL, schema and migrations, the unique
rule under a many-connection race, ids across init, leases, and passwords kept out of sight."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import orjson
import psycopg
import pytest

from taskwatcher.engine.control import default_kill_wait
from taskwatcher.engine.errors import StoreError, UniqueConflict
from taskwatcher.engine.housekeeping import housekeep
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.pg_db import _masker, redacted
from taskwatcher.engine.schema import LATEST_VERSION
from taskwatcher.engine.store import Store, open_store
from tests.helpers import run_cli
from tests.pg_server import with_database
from tests.store_helpers import TOKEN_HASH, claim, finish, started
from tests.test_store_race import LIFECYCLES, run_together


def sql(url: str, statement: str, params: tuple = ()) -> list[tuple]:
    """One statement on a connection of the test's own, as an administrator would run it."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


@pytest.mark.parametrize("scheme", ["postgresql://", "postgres://"])
def test_a_url_selects_postgresql_for_every_command(pg_url, scheme, monkeypatch):
    url = pg_url.replace("postgresql://", scheme, 1)
    reserved = run_cli("twctl", "--db", url, "reserve", "--name", "built")
    assert reserved.returncode == 0, reserved.stderr
    monkeypatch.setenv("TASKWATCHER_DB", url)
    listed = run_cli("twctl", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [task["name"] for task in orjson.loads(listed.stdout)] == ["built"]
    assert sql(pg_url, "SELECT name FROM tasks") == [("built",)]


def test_the_tables_and_version_are_on_the_server(pg_url):
    open_store(pg_url).close()
    assert sql(pg_url, "SELECT version FROM taskwatcher_schema") == [(LATEST_VERSION,)]
    tables = {row[0] for row in sql(pg_url, "SELECT tablename FROM pg_tables WHERE schemaname"
                                    " = current_schema()")}  # fmt: skip
    assert tables == {"tasks", "feedbacks", "history", "taskwatcher_schema"}


def test_a_life_cycle_reads_back_as_on_sqlite(pg_url):
    with open_store(pg_url) as store:
        taskid = started(store, "job", timeout=5.0, command=["sleep", "1"])
        store.heartbeat(taskid, TOKEN_HASH, 1234.5, {"step": "two", "odd": "a\x00b"})
        store.grade(taskid, TOKEN_HASH, "SILENT")
        task = store.get_task(taskid)
        assert (task.status, task.timeout, task.heartbeat, task.unique) == (
            "SILENT", 5.0, 1234.5, False
        )  # fmt: skip
        assert store.load_feedback(taskid)["step"] == "two"
        ended = finish(store, taskid, Status.COMPLETED, token_hash=TOKEN_HASH)
    assert ended.outcome == Status.COMPLETED
    assert ended.feedback["odd"] == "a\x00b"  # JSON keeps what text columns cannot
    assert ended.command == ["sleep", "1"]


def test_ten_hosts_opening_a_new_database_at_once_give_one_upgrade(pg_url):
    """Ten processes open the empty database together: all succeed, the schema is made once."""
    script = "import sys; from taskwatcher.engine.store import open_store; open_store(sys.argv[1])"
    children = [
        subprocess.Popen([sys.executable, "-c", script, pg_url], stderr=subprocess.PIPE, text=True)
        for _ in range(10)
    ]
    errors = [child.communicate(timeout=60)[1] for child in children]
    assert [child.returncode for child in children] == [0] * 10, errors
    assert sql(pg_url, "SELECT version FROM taskwatcher_schema") == [(LATEST_VERSION,)]


def test_a_newer_schema_is_refused_and_left_alone(pg_url):
    open_store(pg_url).close()
    sql(pg_url, "UPDATE taskwatcher_schema SET version = %s", (LATEST_VERSION + 1,))
    result = run_cli("twctl", "--db", pg_url, "list")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"newer taskwatcher (schema version {LATEST_VERSION + 1}" in result.stderr
    assert sql(pg_url, "SELECT version FROM taskwatcher_schema") == [(LATEST_VERSION + 1,)]


def test_a_database_of_another_program_is_refused(pg_url):
    sql(pg_url, "CREATE TABLE tasks (what text)")
    with pytest.raises(StoreError, match="not a taskwatcher database"):
        open_store(pg_url)
    assert sql(pg_url, "SELECT to_regclass('taskwatcher_schema') IS NULL") == [(True,)]


def test_ids_are_never_reused_across_init(pg_url):
    with open_store(pg_url) as store:
        first = [store.reserve() for _ in range(3)]
        store.reinitialize()
        assert store.live_count() == 0
        after = store.reserve()
    assert after > max(first)


def test_the_unique_rule_holds_in_a_fifty_way_race(pg_url):
    """50 connections reserve one name at once, half unique, half plain, ten rounds: a live
    unique holder always stands alone."""
    stores = [open_store(pg_url) for _ in range(50)]
    try:
        for round_number in range(10):
            name = f"race-{round_number}"
            outcomes = race(stores, name)
            holders = stores[0].list_tasks(name=name)
            assert len(outcomes) == 50
            assert outcomes.count("won") == len(holders)
            if any(task.unique for task in holders):
                assert len(holders) == 1, f"round {round_number}: {holders}"
    finally:
        for store in stores:
            store.close()


def race(stores: list[Store], name: str) -> list[str]:
    """Every store reserves `name` at the same moment, the even ones as unique."""
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def reserve(index: int) -> None:
        barrier.wait()
        try:
            stores[index].reserve(name, unique=index % 2 == 0)
            outcomes.append("won")
        except UniqueConflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_concurrent_life_cycles_on_one_server(tmp_path, pg_url):
    open_store(pg_url).close()
    assert run_together(tmp_path, LIFECYCLES, pg_url) == ["done\n"] * 8
    with open_store(pg_url) as store:
        history = store.history()
    assert len({record.taskid for record in history}) == 25 * 8
    assert {record.outcome for record in history} == {"COMPLETED"}


def test_a_task_whose_lease_ran_out_is_lost_on_any_host(pg_url, monkeypatch):
    """The lease is dated by the server's clock: set back by 100 s, the task is overdue."""
    with open_store(pg_url) as store:
        taskid = started(store, "far", host="host-a")
        renewed = started(store, "near", host="host-a")
        store.kill_request(renewed, TOKEN_HASH)  # a supervisor's look renews its lease
        sql(pg_url, "UPDATE tasks SET lease_until = lease_until - 100 WHERE id = %s", (taskid,))
        monkeypatch.setenv("TASKWATCHER_HOST", "host-c")
        (lost,) = housekeep(store)
        assert [task.taskid for task in store.list_tasks()] == [renewed]
    assert (lost.taskid, lost.outcome) == (taskid, "LOST")
    assert "lease expired" in lost.termerror and "on host host-a" in lost.termerror


def test_a_claim_takes_a_fresh_lease(pg_url):
    """A reservation made long ago is not LOST the moment it starts: the claim renews."""
    with open_store(pg_url) as store:
        taskid = store.reserve("old")
        sql(pg_url, "UPDATE tasks SET lease_until = lease_until - 1000")
        claim(store, taskid)
        assert housekeep(store) == []
        lease = sql(pg_url, "SELECT lease_until - extract(epoch FROM now()) FROM tasks")
    assert 20 < lease[0][0] <= 30


@pytest.fixture
def password_url(pg_admin_url: str, pg_database: str) -> str:
    """The test's database as a role with a password in the URL."""
    role, secret = f"r_{pg_database}", "s3cr3t-Pa55"
    sql(pg_admin_url, f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    sql(pg_admin_url, f"ALTER DATABASE {pg_database} OWNER TO {role}")
    url = with_database(pg_admin_url, pg_database)
    yield url.replace("postgres@", f"{role}:{secret}@", 1)
    sql(pg_admin_url, f"ALTER DATABASE {pg_database} OWNER TO postgres")
    sql(url, f"DROP OWNED BY {role} CASCADE")  # in the database that holds its tables
    sql(pg_admin_url, f"DROP ROLE {role}")


def test_a_password_never_shows(password_url):
    secret = "s3cr3t-Pa55"
    init = run_cli("twctl", "--db", password_url, "init")
    assert init.returncode == 0, init.stderr
    assert secret not in init.stdout and "@127.0.0.1" in init.stdout
    run = run_cli("twrun", "--db", password_url, "--", "sh", "-c", "echo out")
    assert run.returncode == 0, run.stderr
    for command in (["list", "--json"], ["history", "--json"], ["show", "1"]):
        shown = run_cli("twctl", "--db", password_url, *command)
        assert shown.returncode == 0 and secret not in shown.stdout + shown.stderr
    wrong = run_cli("twctl", "--db", password_url.replace(secret, "wrong-Pa55"), "list")
    assert wrong.returncode == 2 and "password authentication failed" in wrong.stderr
    assert "wrong-Pa55" not in wrong.stderr and wrong.stderr.count("\n") == 1


def test_a_missing_server_is_one_line(tmp_path):
    url = f"postgresql://nobody@/db?host={tmp_path}&port=1"
    result = run_cli("twctl", "--db", url, "list")
    assert result.returncode == 2
    assert result.stderr.startswith("twctl: postgresql://nobody@/db") and "cannot open" in (
        result.stderr
    )
    assert result.stderr.count("\n") == 1


def test_without_the_driver_a_url_says_what_to_install(tmp_path, pg_url):
    """sqlite users may not have psycopg: a URL then explains itself in one line."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "psycopg.py").write_text("raise ImportError('no psycopg', name='psycopg')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    result = run_cli("twctl", "--db", pg_url, "list", env=env)
    assert result.returncode == 2
    assert "pip install 'taskwatcher[postgresql]'" in result.stderr
    assert result.stderr.count("\n") == 1


def test_sqlite_commands_never_load_the_driver(db_path):
    script = (
        "import sys; from taskwatcher.engine.store import open_store;"
        f" open_store({str(db_path)!r}).list_tasks(); print('psycopg' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout == "False\n", result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://lab:se#cret@dbhost/tasks", "postgresql://lab@dbhost/tasks"),
        ("postgresql://lab:se?cret@dbhost:6432/tasks", "postgresql://lab@dbhost:6432/tasks"),
        (
            "postgres://lab@dbhost/tasks?password=zz&sslmode=require",
            "postgresql://lab@dbhost/tasks",
        ),
        ("postgresql:///tasks?host=/run/pg", "postgresql:///tasks?host=/run/pg"),
    ],
)
def test_a_location_never_holds_the_password(url, shown):
    """Parsed as libpq parses it: a password may hold characters a URL parser stops at."""
    assert redacted(url)[0] == shown


def test_a_password_is_masked_in_errors_even_where_libpq_quotes_it(tmp_path):
    for url in (
        f"postgresql://lab:se#cret@/db?host={tmp_path}&port=1",
        f"postgresql://lab@/db?host={tmp_path}&port=1&password=sec%zzret",
    ):
        result = run_cli("twctl", "--db", url, "list")
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert "cret" not in result.stderr, result.stderr


def test_a_short_password_does_not_blank_out_messages():
    mask = _masker("postgresql://bob:b@host/db", "b")
    assert mask("permission denied for table b of bob: b") == (
        "permission denied for table *** of bob: ***"
    )


def test_a_database_not_in_utf8_is_refused(pg_admin_url, pg_database):
    sql(pg_admin_url, f"CREATE DATABASE {pg_database}_ascii ENCODING 'SQL_ASCII'"
                      " TEMPLATE template0")  # fmt: skip
    try:
        url = with_database(pg_admin_url, f"{pg_database}_ascii")
        result = run_cli("twctl", "--db", url, "reserve", "--name", "x")
        assert result.returncode == 2 and "not UTF8" in result.stderr
        assert result.stderr.count("\n") == 1
    finally:
        sql(pg_admin_url, f"DROP DATABASE {pg_database}_ascii")


def test_the_unique_rule_holds_where_repeatable_read_is_the_default(pg_url, pg_database):
    """Each statement must see what committed before it: a database whose default isolation
    is REPEATABLE READ would otherwise break the rule."""
    sql(pg_url, f"ALTER DATABASE {pg_database} SET default_transaction_isolation"
                " = 'repeatable read'")  # fmt: skip
    stores = [open_store(pg_url) for _ in range(20)]
    try:
        for round_number in range(3):
            outcomes = race(stores, f"rr-{round_number}")
            holders = stores[0].list_tasks(name=f"rr-{round_number}")
            assert outcomes.count("won") == len(holders)
            if any(task.unique for task in holders):
                assert len(holders) == 1
    finally:
        for store in stores:
            store.close()


def test_a_schema_step_of_another_host_does_not_break_running_statements(pg_url):
    """A newer column added while a supervisor runs: its statements are not prepared plans
    that a changed table would invalidate."""
    with open_store(pg_url) as store:
        taskid = started(store, "job")
        for _ in range(10):
            store.get_task(taskid)
        sql(pg_url, "ALTER TABLE tasks ADD COLUMN priority integer")
        assert store.get_task(taskid).name == "job"
        assert finish(store, taskid, Status.COMPLETED, token_hash=TOKEN_HASH).outcome == (
            "COMPLETED"
        )


def test_renaming_onto_a_unique_holder_at_claim_is_a_conflict(backend_location):
    with open_store(backend_location) as store:
        holder = store.reserve("nightly", unique=True)
        other = store.reserve("other")
        with pytest.raises(UniqueConflict) as conflict:
            claim(store, other, name="nightly")
        assert conflict.value.holder == holder
        assert store.get_task(other).status == "RESERVED"


def test_a_stale_reservation_another_host_is_expiring_is_left_to_it(pg_url):
    """Housekeeping skips a row another host holds, and returns instead of spinning."""
    now = [1000.0]
    with open_store(pg_url, clock=lambda: now[0], reservation_ttl=10) as store:
        taskid = store.reserve("stale")
        now[0] += 60
        with psycopg.connect(pg_url) as other:  # a transaction of another host, left open
            other.execute("SELECT * FROM tasks WHERE id = %s FOR UPDATE", (taskid,))
            done = threading.Event()
            threading.Thread(target=lambda: (store.expire_reservations(), done.set())).start()
            assert done.wait(10)
        assert [ended.taskid for ended in store.expire_reservations()] == [taskid]


def test_kill_waits_past_the_lease_by_default(pg_url, db_path, monkeypatch):
    """A kill of a task whose host died ends when its lease runs out: the default wait
    outlasts the lease, so it reports LOST rather than giving up."""
    monkeypatch.setenv("TASKWATCHER_LEASE", "60")
    with open_store(pg_url) as store:
        assert default_kill_wait(store) == 65
    with open_store(db_path) as store:
        assert default_kill_wait(store) == 30


@pytest.mark.parametrize("lease", ["1", "0", "-5", "soon"])
def test_a_lease_too_short_to_renew_is_refused(pg_url, lease):
    result = run_cli(
        "twctl", "--db", pg_url, "list", env={**os.environ, "TASKWATCHER_LEASE": lease}
    )
    assert result.returncode == 2 and "TASKWATCHER_LEASE" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("command", "code"), [(["twctl", "list"], 2), (["twrun", "--", "true"], 125)]
)
def test_a_key_value_connection_string_is_refused_not_made_a_file(tmp_path, command, code):
    """libpq's other form is not taken for a path: that file would be named after the
    password it holds."""
    conninfo = "host=dbhost dbname=tasks password=s3cret"
    result = run_cli(command[0], "--db", conninfo, *command[1:], cwd=tmp_path)
    assert result.returncode == code and "postgresql:// URL" in result.stderr
    assert "s3cret" not in result.stderr and list(tmp_path.iterdir()) == []
