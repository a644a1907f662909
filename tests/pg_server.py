"""A throwaway PostgreSQL server for the tests: `python -m tests.pg_server -- CMD ARGS...`.

The PostgreSQL tests need a real server, and a shared one would leak state between runs and
machines; so each run gets its own: initdb in a temporary folder, started on a free port of
127.0.0.1 and on a unix socket in that folder, with durability turned off (nothing in it has
to survive), and removed when CMD ends. CMD finds it in `$TASKWATCHER_TEST_PG` (a libpq URL
over TCP) and `$TASKWATCHER_TEST_PG_SOCKET` (the same server over the unix socket).

- `$TASKWATCHER_TEST_PG` already set: that server is used, CMD is just run.
- As root the server runs as the `postgres` user (PostgreSQL refuses to run as root).
- No server possible (no initdb, start fails): one line on stderr says why and CMD runs
  anyway, so the PostgreSQL tests skip; with `$CI` set that line is an error (exit 1), since
  CI must not pass by skipping them.

The same is available from Python: `start_server()` returns a `Server` to `.stop()`.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import quote, urlsplit, urlunsplit

ENV_TCP = "TASKWATCHER_TEST_PG"
ENV_SOCKET = "TASKWATCHER_TEST_PG_SOCKET"
#: The superuser initdb creates, and the system user the server runs as under root.
PG_USER = "postgres"
PROG = "tests.pg_server"

#: Nothing in the test server has to survive a crash, so nothing is made durable; many
#: connections, because 4 xdist workers and multi-connection tests share the one server.
SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "400",
}

#: Who may connect: the superuser without a password (the tests' administrator), every
#: other role over TCP with its password, as a lab's server would ask (the socket trusts all).
HBA = """\
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""

#: The unix socket's path (`<folder>/.s.PGSQL.<port>`) must fit in sun_path's 108 bytes.
_MAX_FOLDER_LEN = 107 - len("/.s.PGSQL.65535")
_TOOL_TIMEOUT = 60.0
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+ \S+ \[\d+\] ")
_COMPLAINT = re.compile(r"FATAL|PANIC|ERROR|could not|invalid")


class ServerUnavailable(RuntimeError):
    """Why no server could be started, in one line for whoever runs the tests."""


@dataclass
class Server:
    """A running throwaway server; `stop()` ends it and removes its folder."""

    folder: Path
    port: int
    pg_ctl: str
    as_user: list[str]
    started_in: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def tcp_url(self) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def socket_url(self) -> str:
        host = quote(str(self.folder), safe="/")
        return f"postgresql://{PG_USER}@/postgres?host={host}&port={self.port}"

    @property
    def version(self) -> str:
        try:
            return (self.data / "PG_VERSION").read_text().strip()
        except OSError:
            return "?"

    def stop(self) -> None:
        """End the server at once (nothing to save) and remove its folder; safe to repeat."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if (self.data / "postmaster.pid").exists():
                stop = [self.pg_ctl, "stop", "-w", "-t", "30", "-m", "immediate", "-D"]
                _run_tool([*self.as_user, *stop, str(self.data)], self.folder)
        except (OSError, subprocess.SubprocessError):
            pass
        _kill_postmaster(self.data)
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_tools() -> tuple[str, str] | None:
    """initdb and pg_ctl: from PATH when both are there, else the newest Debian-style install."""
    on_path = shutil.which("initdb"), shutil.which("pg_ctl")
    if on_path[0] and on_path[1]:
        return on_path[0], on_path[1]
    found: list[tuple[tuple[int, ...], str, str]] = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        initdb, pg_ctl = bindir / "initdb", bindir / "pg_ctl"
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            version = tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name))
            found.append((version, str(initdb), str(pg_ctl)))
    if not found:
        return None
    _, initdb, pg_ctl = max(found)
    return initdb, pg_ctl


def start_server() -> Server:
    """Create and start a throwaway server; raises ServerUnavailable saying why it cannot."""
    began = time.monotonic()
    tools = find_tools()
    if tools is None:
        raise ServerUnavailable(
            "no initdb/pg_ctl on PATH or under /usr/lib/postgresql/*/bin "
            "(Debian: apt-get install postgresql)"
        )
    initdb, pg_ctl = tools
    as_user, owner = _server_user()
    folder = Path(tempfile.mkdtemp(prefix="tw-pg-", dir=_temp_base()))
    server = Server(folder=folder, port=0, pg_ctl=pg_ctl, as_user=as_user)
    try:
        # 0755 and owned by the server's user: it writes here, and other users' clients
        # reach the socket here.
        folder.chmod(0o755)
        if owner is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        data = server.data
        init = [initdb, "--auth=trust", "-U", PG_USER, "-D", str(data), "--no-sync"]
        # C locale: initdb does not depend on which locales the machine has generated.
        done = _run_tool([*as_user, *init, "--encoding=UTF8", "--locale=C"], folder)
        if done.returncode != 0:
            raise ServerUnavailable(f"initdb failed: {_last_line(done.stdout)}")
        _write_settings(data / "postgresql.conf", folder)
        (data / "pg_hba.conf").write_text(HBA)
        _start(server)
    except BaseException:
        server.stop()
        raise
    server.started_in = time.monotonic() - began
    return server


def with_database(url: str, dbname: str) -> str:
    """The same connection string naming another database (a URL, or libpq's key=value form)."""
    if not url.startswith(("postgresql://", "postgres://")):
        return f"{url} dbname={dbname}"  # libpq: the last of a repeated keyword wins
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def main(argv: Sequence[str] | None = None) -> int:
    """Run CMD with a throwaway server (or the one in $TASKWATCHER_TEST_PG); CMD's status."""
    cmd = list(sys.argv[1:] if argv is None else argv)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        print(f"usage: python -m {PROG} -- CMD [ARG...]", file=sys.stderr)
        return 2
    if os.environ.get(ENV_TCP):
        return _exec_cmd(cmd)
    runner = _Runner()
    with runner.signals():
        try:
            server = start_server()
        except ServerUnavailable as why:
            print(f"{PROG}: no PostgreSQL server for the tests: {why}", file=sys.stderr)
            if os.environ.get("CI"):
                return 1
            env = {k: v for k, v in os.environ.items() if k != ENV_SOCKET}
            return runner.run(cmd, env)
        with server:
            print(
                f"{PROG}: PostgreSQL {server.version} on 127.0.0.1:{server.port}, "
                f"socket in {server.folder}, started in {server.started_in:.2f} s",
                file=sys.stderr,
            )
            env = {**os.environ, ENV_TCP: server.tcp_url, ENV_SOCKET: server.socket_url}
            return runner.run(cmd, env)


def _server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a tool as the server's user, and that user under root."""
    if os.geteuid() != 0:
        return [], None
    try:
        owner = pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServerUnavailable(
            f"running as root and there is no {PG_USER!r} user to run the server as"
        ) from None
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
    )
    if runuser is None:
        raise ServerUnavailable("running as root and runuser is not installed")
    return [runuser, "-u", PG_USER, "--"], owner


def _temp_base() -> str:
    """The system temp folder, unless others cannot reach into it or its socket path is too long."""
    base = Path(tempfile.gettempdir()).resolve()
    reachable = all(p.stat().st_mode & stat.S_IXOTH for p in (base, *base.parents))
    if reachable and len(str(base)) + len("/tw-pg-xxxxxxxx") <= _MAX_FOLDER_LEN:
        return str(base)
    return "/tmp"


def _write_settings(conf: Path, folder: Path) -> None:
    """Append the test settings; the last setting of a name in postgresql.conf wins."""
    lines = [f"{name} = {value}" for name, value in SETTINGS.items()]
    socket_dir = str(folder).replace("'", "''")
    lines.append(f"unix_socket_directories = '{socket_dir}'")
    with conf.open("a") as out:
        out.write("\n# tests.pg_server\n" + "\n".join(lines) + "\n")


def _start(server: Server, attempts: int = 3) -> None:
    """pg_ctl start on a free port; another free port when someone took that one meanwhile."""
    log = server.folder / "log"
    for attempt in range(attempts):
        server.port = _free_port()
        start = [server.pg_ctl, "start", "-w", "-t", "30", "-D", str(server.data), "-l", str(log)]
        done = _run_tool([*server.as_user, *start, "-o", f"-p {server.port}"], server.folder)
        if done.returncode == 0:
            return
        why = _log_errors(_read(log)) or _last_line(done.stdout)
        if "could not bind" not in _read(log) or attempt == attempts - 1:
            raise ServerUnavailable(f"pg_ctl start failed: {why}")
        _kill_postmaster(server.data)


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_tool(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run initdb or pg_ctl, output kept for the error line.

    In the server's folder, since the server's user may not be allowed into ours; in a
    session of its own, so that a Ctrl-C meant for the tests does not reach the server
    before its stop, and so that an interrupted tool is ended with all its processes
    (runuser's child included) before the folder is removed.
    """
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as tool:
        try:
            out, _ = tool.communicate(timeout=_TOOL_TIMEOUT)
        except BaseException:
            with suppress(OSError):
                os.killpg(tool.pid, signal.SIGKILL)
            tool.wait()
            raise
    return subprocess.CompletedProcess(cmd, tool.returncode, out)


def _kill_postmaster(data: Path) -> None:
    """Last resort when pg_ctl could not stop it: the pid file names the postmaster, which is
    only killed while it still works in this data folder (a stale file's pid may be reused)."""
    try:
        pid = int(_read(data / "postmaster.pid").split("\n", 1)[0])
        if pid > 0 and Path(f"/proc/{pid}/cwd").resolve() == data.resolve():
            os.kill(pid, signal.SIGKILL)
    except (ValueError, OSError):
        pass


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _log_errors(log: str) -> str:
    """The server log's complaints in one line, without their timestamps and pids."""
    lines = [" ".join(_LOG_PREFIX.sub("", line).split()) for line in log.splitlines()]
    complaints = [line for line in lines if _COMPLAINT.search(line)]
    return "; ".join(complaints[:3])


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _exec_cmd(cmd: list[str]) -> int:
    """Become CMD: with a server someone else runs, there is nothing to clean up afterwards."""
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"{PROG}: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
    return 127


class _Runner:
    """Runs CMD so that the server is stopped however CMD or this process ends.

    SIGTERM and SIGHUP are passed on to CMD, which gets 10 s to end before it is killed; a
    Ctrl-C on the terminal already reached CMD (same process group) and is not sent twice.
    Before CMD runs, those signals interrupt the start, which then cleans up.
    """

    GRACE = 10.0
    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.kill_at: float | None = None
        self.waiting = False

    @contextmanager
    def signals(self) -> Iterator[None]:
        """Our handler for SIGINT, SIGTERM and SIGHUP while in the `with` block."""
        saved = {signum: signal.signal(signum, self._on_signal) for signum in self.SIGNALS}
        try:
            yield
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:
            raise SystemExit(128 + signum)
        if signum != signal.SIGINT or not _terminal_signals_our_group():
            self.child.send_signal(signum)
        if signum != signal.SIGINT and self.kill_at is None:
            self.kill_at = time.monotonic() + self.GRACE
            if self.waiting:
                raise _Woken  # a wait without timeout would not see the new deadline

    def run(self, cmd: list[str], env: Mapping[str, str]) -> int:
        try:
            self.child = subprocess.Popen(cmd, env=dict(env))
        except OSError as e:
            print(f"{PROG}: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
            return 127
        while True:
            try:
                self.waiting = True
                left = None if self.kill_at is None else max(0.0, self.kill_at - time.monotonic())
                status = self.child.wait(timeout=left)
                break
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.kill_at = None  # then wait for it without a deadline
            except _Woken:
                pass
            finally:
                self.waiting = False
        return 128 - status if status < 0 else status


class _Woken(Exception):
    """Raised by the signal handler to restart a wait with the deadline it has just set."""


def _terminal_signals_our_group() -> bool:
    """Whether our process group is the terminal's foreground group (a Ctrl-C reached all)."""
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


if __name__ == "__main__":
    sys.exit(main())
