"""PostgreSQL against sqlite, measured in the same run on the same machine.

A database on a server pays a round trip per statement where sqlite pays a file lock, and
buys kills from other hosts (LISTEN/NOTIFY) and many writers at once; this suite says what
that costs and what it gives:

1. `twctl list --json` with LIVE_TASKS live tasks (the real CLI, start-up included);
2. reserve + claim + archive of one task through the store API;
3. kill latency: a real twrun on "hostA", killed from "hostC" through NOTIFY, both the engine
   call `twctl kill` makes and the whole `twctl kill`; baseline: a same-host kill on sqlite,
   where the supervisor is woken by its wakeup socket;
4. CONCURRENT twruns started at once: tasks/s until all are in history, and errors.

Each measurement gets a fresh database, created on the server of `$TASKWATCHER_TEST_PG`
(`python -m tests.pg_server -- python -m bench pg` starts a throwaway one) and dropped after.
Without that variable the suite says it was skipped and why.

Target: a cross-host kill archived in < 200 ms (engine call, median).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.measure import median_of, seconds, show, target, wall_times
from bench.twctl import run_json, start_live_task
from taskwatcher.engine import control
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.records import Ending
from taskwatcher.engine.settings import HOST_VARIABLE
from taskwatcher.engine.store import Store, open_store
from tests.load_helpers import run_together
from tests.pg_server import ENV_TCP, with_database
from tests.store_helpers import claim

BIN = Path(sys.executable).parent
LIVE_TASKS = 200
LIST_RUNS = 11
API_TASKS = 200
KILLS = 10
KILL_WAIT = 10.0
CONCURRENT = 100
#: How long a freshly started twrun may take to record its child, many starting at once.
START_TIMEOUT = 60.0
#: After the child is recorded the supervisor still has to LISTEN for kills; a kill sent
#: before that is read by its once-a-second look instead, which is not what is measured.
LISTEN_SETTLE = 0.5
NAMES = {"sqlite": "sqlite (baseline)", "pg": "PostgreSQL"}
#: What each backend's store imports, the driver included: part of every command's start-up.
STORE_MODULES = {"sqlite": "taskwatcher.engine.sqlite_store", "pg": "taskwatcher.engine.pg_store"}


def tool(name: str, db: str, *args: str | int) -> list[str]:
    """A twrun or twctl command line on database `db` (a path or a URL)."""
    return [str(BIN / name), "--db", db, *map(str, args)]


@contextmanager
def fresh_databases(admin_url: str) -> Iterator[dict[str, str]]:
    """An empty database of each backend, {"sqlite": path, "pg": url}, removed afterwards.

    The PostgreSQL one is dropped with FORCE: connections left open are ended, not waited for.
    """
    import psycopg
    from psycopg import sql

    name = f"twbench_{secrets.token_hex(6)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with tempfile.TemporaryDirectory(prefix="twbench-pg-") as folder:
            yield {"sqlite": str(Path(folder) / "bench.db"), "pg": with_database(admin_url, name)}
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))


@contextmanager
def on_host(host: str) -> Iterator[dict[str, str]]:
    """This process acting as `host` (the engine reads $TASKWATCHER_HOST at each call); yields
    the environment for its subprocesses."""
    saved = os.environ.get(HOST_VARIABLE)
    os.environ[HOST_VARIABLE] = host
    try:
        yield dict(os.environ)
    finally:
        if saved is None:
            del os.environ[HOST_VARIABLE]
        else:
            os.environ[HOST_VARIABLE] = saved


def show_pair(label: str, figures: dict[str, float], note: str = "") -> None:
    """A heading, then sqlite as the 1.00x baseline and PostgreSQL with its ratio."""
    print(label, flush=True)
    show(f"  {NAMES['sqlite']}", seconds(figures["sqlite"]), "1.00x")
    ratio = figures["pg"] / figures["sqlite"]
    show(f"  {NAMES['pg']}", seconds(figures["pg"]), f"{ratio:.2f}x   {note}".rstrip())


def listed_running(db: str) -> int:
    """RUNNING tasks as the real `twctl list` sees them: the setup is checked end to end."""
    return sum(
        task["status"] == "RUNNING" for task in run_json(tool("twctl", db, "list", "--json"))
    )


def list_figures(admin_url: str) -> None:
    """`twctl list --json`, LIVE_TASKS live tasks whose supervisor is this process.

    On PostgreSQL their leases (30 s by default) run out while nobody renews them: the
    count is checked again after timing, so an expiry never passes for a fast listing.
    """
    with fresh_databases(admin_url) as dbs, ExitStack() as stores:
        for db in dbs.values():
            store = stores.enter_context(open_store(db))
            for index in range(LIVE_TASKS):
                start_live_task(store, f"live-{index}")
        for label, db in dbs.items():
            if (running := listed_running(db)) != LIVE_TASKS:
                raise RuntimeError(f"{label}: expected {LIVE_TASKS} RUNNING, listed {running}")
        commands = {label: tool("twctl", db, "list", "--json") for label, db in dbs.items()}
        imports = {f"import {label}": [sys.executable, "-c", f"import {module}"]
                   for label, module in STORE_MODULES.items()}  # fmt: skip
        runs = wall_times({**commands, **imports}, LIST_RUNS)
        if any(listed_running(db) != LIVE_TASKS for db in dbs.values()):
            raise RuntimeError("live tasks changed while list was timed")
    median = {label: statistics.median(samples) for label, samples in runs.items()}
    show_pair(f"twctl list --json, {LIVE_TASKS} live (median of {LIST_RUNS})", median)
    driver = median["import pg"] - median["import sqlite"]
    show("  of the difference: importing pg_store (psycopg) over sqlite_store", seconds(driver))


def task_cycle(store: Store) -> None:
    """A task's whole life as its supervisor writes it: reserve, claim, archive."""
    taskid = store.reserve("cycle")
    token_hash = claim(store, taskid)
    store.archive(taskid, Ending(Status.COMPLETED), token_hash=token_hash)


def api_figures(admin_url: str) -> None:
    """The store's own cost per task, without any process start-up around it."""
    with fresh_databases(admin_url) as dbs, ExitStack() as stores:
        per_task = {}
        for label, db in dbs.items():
            store = stores.enter_context(open_store(db))
            per_task[label] = median_of(lambda store=store: task_cycle(store), API_TASKS)
            if len(store.history()) != API_TASKS:
                raise RuntimeError(f"{label}: not every cycled task is in history")
    show_pair(f"store API reserve+claim+archive per task (median of {API_TASKS})", per_task)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition`; RuntimeError naming `what` after `timeout`, so a hang fails the run."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} after {timeout:g} s")
        time.sleep(0.05)


def timed(action: Callable[[], object]) -> float:
    """Seconds of one call: each kill ends a different task, so there is nothing to repeat."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def kill_samples(
    db: str, supervisor_host: str, killer_host: str
) -> tuple[list[float], list[float]]:
    """Seconds per kill of 2 * KILLS twruns of `sleep 60` on `supervisor_host`, killed from
    `killer_host`: half by the engine call `twctl kill` makes, half by a whole `twctl kill`.

    All are started first (on a database this process created) and killed one by one, so
    no start-up overlaps a kill.
    """
    with ExitStack() as cleanup:
        store = cleanup.enter_context(open_store(db))
        with on_host(supervisor_host) as env:
            runners = [
                subprocess.Popen(tool("twrun", db, "--", "sleep", "60"), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for _ in range(2 * KILLS)
            ]  # fmt: skip
        cleanup.callback(stop_runners, runners)
        wait_until(
            lambda: sum(task.pid is not None for task in store.list_tasks()) == len(runners),
            START_TIMEOUT,
            f"{len(runners)} twruns with their child recorded",
        )
        time.sleep(LISTEN_SETTLE)
        taskids = [task.taskid for task in store.list_tasks()]
        with on_host(killer_host) as env:
            who = control.requester()
            engine = [
                timed(lambda t=t: control.kill_tasks(store, [t], who, KILL_WAIT))
                for t in taskids[:KILLS]
            ]
            commands = {str(t): tool("twctl", db, "kill", t) for t in taskids[KILLS:]}
            cli = [samples[0] for samples in wall_times(commands, 1, env=env).values()]
        outcomes = [store.history_of(t) for t in taskids]
        if any(ended is None or ended.outcome != Status.KILLED for ended in outcomes):
            raise RuntimeError(f"a killed task did not end KILLED: {outcomes}")
        codes = [runner.wait(timeout=30) for runner in runners]
        if any(code != 143 for code in codes):
            raise RuntimeError(f"twrun exit statuses after kill: {codes}")
    return engine, cli


def stop_runners(runners: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM makes a twrun still running stop its task and record it; then reap them all."""
    for runner in runners:
        if runner.poll() is None:
            runner.terminate()
    for runner in runners:
        runner.communicate(timeout=30)


def kill_figures(admin_url: str) -> None:
    """PostgreSQL: hostA's supervisor hears hostC's kill through NOTIFY; sqlite: same host."""
    with fresh_databases(admin_url) as dbs:
        sqlite_engine, sqlite_cli = kill_samples(dbs["sqlite"], "hostA", "hostA")
        pg_engine, pg_cli = kill_samples(dbs["pg"], "hostA", "hostC")
    engine = {"sqlite": statistics.median(sqlite_engine), "pg": statistics.median(pg_engine)}
    ok = engine["pg"] < 0.200
    show_pair(
        f"kill until archived, engine kill_tasks() (median of {KILLS})",
        engine,
        target(ok, "< 200 ms"),
    )
    show("  PostgreSQL worst", seconds(max(pg_engine)))
    show_pair(
        f"twctl kill, whole subprocess (median of {KILLS})",
        {"sqlite": statistics.median(sqlite_cli), "pg": statistics.median(pg_cli)},
    )
    show("  PostgreSQL worst", seconds(max(pg_cli)))
    print("  (sqlite: killer on the supervisor's host; PostgreSQL: from hostC to hostA)")


def concurrent_run(db: str) -> tuple[float, int, str]:
    """CONCURRENT `twrun -- true` at once on an initialised database: seconds until all have
    exited (each exits after archiving its task), errors, and the first error's stderr."""
    open_store(db).close()  # the schema first: creating it is not what is measured
    started = time.perf_counter()
    finished = run_together([tool("twrun", db, "--", "true") for _ in range(CONCURRENT)])
    elapsed = time.perf_counter() - started
    failed = [run for run in finished if run.returncode != 0]
    with open_store(db) as store:
        completed = sum(ended.outcome == Status.COMPLETED for ended in store.history())
        live = store.live_count()
    errors = len(failed) + (CONCURRENT - completed) + live
    first = failed[0].stderr.strip().splitlines()[-1:] if failed else []
    return elapsed, errors, "".join(first)


def concurrent_figures(admin_url: str) -> None:
    """Throughput and errors when every supervisor meets the database at the same time."""
    with fresh_databases(admin_url) as dbs:
        runs = {label: concurrent_run(db) for label, db in dbs.items()}
    print(f"{CONCURRENT} twrun -- true started at once: tasks/s until all are in history")
    rates = {label: CONCURRENT / elapsed for label, (elapsed, _, _) in runs.items()}
    for label, (elapsed, errors, first) in runs.items():
        ratio = rates[label] / rates["sqlite"]
        show(f"  {NAMES[label]}", f"{rates[label]:.1f}/s", f"{ratio:.2f}x   in {seconds(elapsed)}")
        verdict = "ok" if errors == 0 else f"WRONG, e.g. {first!r}"
        show("    errors: non-zero exits, missing history, left live", str(errors), verdict)


def main() -> None:
    """Run the four comparisons, or say in one line why they cannot run here."""
    admin_url = os.environ.get(ENV_TCP)
    if not admin_url:
        print(f"pg suite skipped: ${ENV_TCP} is not set (run: python -m tests.pg_server --"
              " python -m bench pg, or make bench)", flush=True)  # fmt: skip
        return
    if importlib.util.find_spec("psycopg") is None:
        print("pg suite skipped: psycopg is not installed (pip install 'taskwatcher[postgresql]')")
        return
    list_figures(admin_url)
    api_figures(admin_url)
    kill_figures(admin_url)
    concurrent_figures(admin_url)


if __name__ == "__main__":
    main()
