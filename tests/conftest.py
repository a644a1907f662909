"""Shared fixtures: every test gets its own state folder, so nothing touches the user's database."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import psutil
import pytest

from tests.helpers import wait_for
from tests.pg_server import ENV_SOCKET, ENV_TCP, with_database
from tests.server_helpers import alive


@pytest.fixture(autouse=True)
def isolated_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default database folder into tmp_path, for subprocesses too."""
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    monkeypatch.delenv("TASKWATCHER_DB", raising=False)
    monkeypatch.delenv("TASKWATCHER_SERVER", raising=False)  # served only where a test says
    return state


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database path in tmp_path; the file itself is created by whoever opens it first."""
    return tmp_path / "tasks.db"


@pytest.fixture
def empty_db(db_path: Path) -> Path:
    """An empty database at db_path, for commands that only read (a missing one named by
    --db is an error for them)."""
    from taskwatcher.engine.store import open_store

    open_store(db_path).close()
    return db_path


#: Run a command as root without the capabilities that let root ignore file modes.
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def unprivileged() -> list[str]:
    """The prefix that makes file modes bind root too; skips where it is unavailable."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    if subprocess.run([*UNPRIVILEGED, "true"], capture_output=True).returncode:
        pytest.skip("cannot drop capabilities here")
    return UNPRIVILEGED


@pytest.fixture
def stranger() -> Iterator[psutil.Process]:
    """An unrelated process, leader of its own group, alive until the test ends.

    It is a `sleep`, which SIGTERM, SIGKILL and SIGUSR1 would all end: still running
    afterwards means it received none of them.
    """
    child = subprocess.Popen(["sleep", "60"], process_group=0)
    yield psutil.Process(child.pid)
    child.kill()
    child.wait()


def _no_postgres(why: str) -> NoReturn:
    """Skip a PostgreSQL test without a server; in CI fail it, since CI must run them all."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}, and $CI is set: the PostgreSQL tests must run", pytrace=False)
    pytest.skip(f"{why}: run the tests through `python -m tests.pg_server -- ...` (make test)")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """The superuser URL of the run's PostgreSQL server ($TASKWATCHER_TEST_PG), over TCP.

    For creating databases and roles; tests use their own database (`pg_url`). Skips without
    a server, fails without one when $CI is set.
    """
    url = os.environ.get(ENV_TCP)
    if not url:
        _no_postgres(f"${ENV_TCP} is not set")
    return url


@pytest.fixture
def pg_database(pg_admin_url: str) -> Iterator[str]:
    """The name of a database made for this test alone (`tw_<hex>`), dropped afterwards.

    `pg_url` and `pg_socket_url` reach this same database, so a test may use both. The drop
    is forced: connections the test left open are ended, not waited for.
    """
    try:
        import psycopg
        from psycopg import sql
    except ImportError:
        _no_postgres("psycopg is not installed")
    name = f"tw_{secrets.token_hex(8)}"
    with psycopg.connect(pg_admin_url, autocommit=True, connect_timeout=10) as admin:
        # A file copy of the small template is a third of the time of the WAL-logged copy
        # PostgreSQL 15 makes by default (older servers know no other).
        newer = admin.info.server_version >= 150000
        strategy = sql.SQL(" STRATEGY = FILE_COPY" if newer else "")
        admin.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), strategy))
    try:
        yield name
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True, connect_timeout=10) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))


@pytest.fixture
def pg_url(pg_admin_url: str, pg_database: str) -> str:
    """A libpq URL over TCP (127.0.0.1) to a fresh database of this test's own, as superuser.

    The database is `pg_database`: created empty for the test, dropped after it.
    """
    return with_database(pg_admin_url, pg_database)


@pytest.fixture
def pg_socket_url(pg_database: str) -> str:
    """The same fresh database as `pg_url`, over the server's unix socket.

    Skips (fails in CI) when the server was not started by tests.pg_server, which alone sets
    $TASKWATCHER_TEST_PG_SOCKET.
    """
    url = os.environ.get(ENV_SOCKET)
    if not url:
        _no_postgres(f"${ENV_SOCKET} is not set")
    return with_database(url, pg_database)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_location(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """A store's location on each backend in turn: an sqlite file, a PostgreSQL database,
    for the tests of what both must do alike."""
    return db_path if request.param == "sqlite" else request.getfixturevalue("pg_url")


#: A hook that writes what it was told (its TASKWATCHER_ variables and the feedback file's
#: JSON) to the file named by its argument.
REPORTER = """
import json, os, sys
told = {k: v for k, v in os.environ.items() if k.startswith("TASKWATCHER_")}
with open(told["TASKWATCHER_FEEDBACK_JSON"], "rb") as stream:
    told["feedback"] = json.load(stream)
with open(sys.argv[1], "w") as out:
    json.dump(told, out)
"""


@pytest.fixture
def reporter(tmp_path: Path):
    """A hook command line, and how to read what it was told (None if it never ran)."""
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)

    def hook(name: str = "told.json") -> str:
        return shlex.join([sys.executable, str(script), str(tmp_path / name)])

    def told(name: str = "told.json") -> dict | None:
        path = tmp_path / name
        return json.loads(path.read_text()) if path.exists() else None

    hook.told = told  # type: ignore[attr-defined]
    return hook


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a command the command server runs, with a runtime folder of its
    own (short enough for a socket path); its server is ended afterwards, whatever the test
    did."""
    runtime = Path(tempfile.mkdtemp(prefix="tws-", dir="/tmp"))
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "TASKWATCHER_SERVER": "1",
        "TASKWATCHER_SERVER_IDLE": "30",
        "TASKWATCHER_DB": str(tmp_path / "served.db"),  # not db_path: the server's first use
    }
    yield env
    for lock in runtime.glob("taskwatcher/*.lock"):
        pid = int(lock.read_text() or 0)
        if pid > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_for(lambda pid=pid: not alive(pid), timeout=10)
    shutil.rmtree(runtime)
