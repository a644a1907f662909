"""The command server: one warm interpreter per user and installation that forks a worker
for each command a client (`cli.start`) hands it, so that a command starts without importing
the package again, and many supervisors share the pages of the one import.

A worker must be indistinguishable from the command run in its client's process, but for
its session (the server's: no controlling terminal). The server reads the client's state
from /proc: what a worker can take on (umask, limits, niceness, ignored and blocked signals,
and the working folder, streams, environment and arguments the client sends) it sets up
after the fork; what it cannot (credentials, capabilities, cgroup, namespaces, root, CPU
and memory affinity, a lower niceness or a higher hard limit) makes it refuse, and the
client runs the command itself. A client that dies before its worker takes its worker with
it (SIGKILL, as twrun's own death would end it), so no work outlives its caller.

    python -m taskwatcher.cli.server SOCKET    (started by a client; ends when idle)
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import io
import marshal
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

from taskwatcher.cli.start import COMMANDS, IDLE_VARIABLE, MAGIC, socket_path, text_encodings

#: Seconds an idle server waits for a command (`$TASKWATCHER_SERVER_IDLE`).
DEFAULT_IDLE = 60.0
#: What the server imports for its workers: twrun and twctl, and the sqlite store they open
#: (twparse, rarely run often, imports what it needs in its worker: logging, say, which a
#: supervisor must not carry).
PREIMPORTED = (COMMANDS["twrun"], COMMANDS["twctl"], "taskwatcher.engine.sqlite_store")
#: Seconds a client has to send its request once connected.
REQUEST_TIMEOUT = 5.0
#: What a worker cannot take on: these lines of /proc/<pid>/status must read the same.
SAME_STATUS = (
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
    "Seccomp", "Cpus_allowed_list", "Mems_allowed_list",
)  # fmt: skip
#: ... nor these files of /proc/<pid>.
SAME_FILES = ("cgroup", "oom_score_adj")
#: The largest request taken (arguments and environment), against a runaway client.
MOST_BYTES = 16 << 20


class Refused(Exception):
    """The server cannot stand in for this client: the client runs the command itself."""


def main(argv: list[str] | None = None) -> int:
    """Serve on the socket path given, until idle; 0 at once if another server has it."""
    (path,) = sys.argv[1:] if argv is None else argv
    lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another server holds this socket
        return 0
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())  # who holds it, for `kill $(cat ...lock)`
    os.chdir("/")
    # Two descriptors per running worker: as many workers as the system lets this user open
    # files (each worker takes its client's limits back).
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    for module in PREIMPORTED:
        __import__(module)
    for command in ("twrun", "twctl"):  # their parsers, and the patterns argparse compiles
        sys.modules[COMMANDS[command]].build_parser()
    if socket_path() != path:  # the package changed while it was being imported
        return 0
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a server that was killed (the lock says none is alive)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    server = Server(listener, path, lock, _idle_seconds())
    gc.collect()
    gc.freeze()  # the workers' collections then leave the shared pages alone
    try:
        server.serve()
    finally:
        server.close()
    return 0


def _idle_seconds() -> float:
    try:
        return max(0.1, float(os.environ.get(IDLE_VARIABLE, DEFAULT_IDLE)))
    except ValueError:
        return DEFAULT_IDLE


def _ignore(signum: int, frame: object) -> None:
    """A handler that does nothing, so that the signal's byte reaches the wake-up pipe."""


class Server:
    """Accepts requests, forks workers, and tells each client how its worker ended.

    SIGTERM closes it to new commands; it ends once the running workers have (their clients
    still learn how they ended).
    """

    def __init__(self, listener: socket.socket, path: str, lock: int, idle: float) -> None:
        self.listener: socket.socket | None = listener
        self.path = path
        self.bound = os.stat(path)
        self.lock = lock
        self.idle = idle
        self.poller = select.poll()
        self.poller.register(listener, select.POLLIN)
        self.wakeup, self.wakeup_writer = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller.register(self.wakeup, select.POLLIN)
        signal.set_wakeup_fd(self.wakeup_writer)
        signal.signal(signal.SIGTERM, _ignore)
        #: pidfd -> (pid, connection) of each running worker; client fd -> its pidfd.
        self.workers: dict[int, tuple[int, socket.socket]] = {}
        self.clients: dict[int, int] = {}

    def serve(self) -> None:
        """Until no command has come for `idle` seconds (or SIGTERM came) and no worker
        runs."""
        quiet_since = time.monotonic()
        while self.listener is not None or self.workers:
            wait = None if self.workers else self.idle - (time.monotonic() - quiet_since)
            if wait is not None and wait <= 0:
                return
            events = self.poller.poll(None if wait is None else wait * 1000)
            for fd, _ in events:
                if fd == self.wakeup:
                    self._woken()
                elif self.listener is not None and fd == self.listener.fileno():
                    self._accept()
                elif fd in self.workers:
                    self._reap(fd)
                elif fd in self.clients:
                    self._client_gone(fd)
            if events and not self.workers:
                quiet_since = time.monotonic()

    def close(self) -> None:
        """Take the socket away (if it is still ours) and stop listening."""
        if self.listener is None:
            return
        with contextlib.suppress(OSError):
            now = os.stat(self.path)
            if (now.st_dev, now.st_ino) == (self.bound.st_dev, self.bound.st_ino):
                os.unlink(self.path)
                os.unlink(f"{self.path}.lock")
        self.poller.unregister(self.listener)
        self.listener.close()
        self.listener = None

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            if signal.SIGTERM in os.read(self.wakeup, 256):
                self.close()

    def _accept(self) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            client = _client_pid(connection)
            connection.settimeout(REQUEST_TIMEOUT)
            request = _read_request(connection, fds)
            if request["text"] != text_encodings():
                raise Refused("locale")
            setting = _setting_of(client)
            connection.settimeout(None)
            self._fork(connection, request, fds, setting)
        except (OSError, ValueError, EOFError, TypeError, KeyError, Refused):
            with contextlib.suppress(OSError):
                connection.sendall(b"R")
            connection.close()
        finally:
            for fd in fds:
                os.close(fd)

    def _fork(
        self, connection: socket.socket, request: dict, fds: list[int], setting: dict
    ) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: whatever happens, it never returns to serving
            status = 1
            try:
                self._leave()
                os.close(connection.detach())
                status = _work(request, fds, setting)
            finally:
                os._exit(status)
        pidfd = os.pidfd_open(pid)
        self.workers[pidfd] = (pid, connection)
        self.clients[connection.fileno()] = pidfd
        self.poller.register(pidfd, select.POLLIN)
        self.poller.register(connection, select.POLLIN | select.POLLRDHUP)
        try:
            connection.sendall(b"P" + pid.to_bytes(8, "little"))
        except OSError:
            self._client_gone(connection.fileno())

    def _leave(self) -> None:
        """In a worker: let go of everything the server holds."""
        signal.set_wakeup_fd(-1)
        for pidfd, (_, connection) in self.workers.items():
            os.close(pidfd)
            os.close(connection.detach())
        os.close(self.listener.detach())
        for fd in (self.lock, self.wakeup, self.wakeup_writer):
            os.close(fd)

    def _reap(self, pidfd: int) -> None:
        pid, connection = self.workers.pop(pidfd)
        _, status = os.waitpid(pid, 0)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        if self.clients.pop(connection.fileno(), None) is not None:
            self.poller.unregister(connection)
            with contextlib.suppress(OSError):
                connection.sendall(b"W" + status.to_bytes(4, "little"))
        connection.close()

    def _client_gone(self, fd: int) -> None:
        """The client hung up before its worker ended: end the worker, as the client's
        death would have ended the command run in it."""
        pidfd = self.clients.pop(fd)
        self.poller.unregister(fd)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _read_request(connection: socket.socket, fds: list[int]) -> dict:
    """The request; the descriptors that came with it (the client's working folder and
    standard streams) go to `fds`, for the caller to close whatever comes of it."""
    data, ancillary, _, _ = connection.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 4))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) // 4 * 4])
    header = len(MAGIC) + 8
    while len(data) < header:
        data += _more(connection)
    if not data.startswith(MAGIC):
        raise ValueError("not a request")
    size = int.from_bytes(data[len(MAGIC) : header], "little")
    if size > MOST_BYTES:
        raise ValueError("request too large")
    while len(data) < header + size:
        data += _more(connection)
    request = marshal.loads(data[header:])
    streams = request["streams"]
    if (
        request["command"] not in COMMANDS
        or not set(streams) <= {0, 1, 2}
        or len(fds) != 1 + len(streams)
        or not all(isinstance(arg, str) for arg in request["argv"])
    ):
        raise ValueError("not a request")
    return request


def _more(connection: socket.socket) -> bytes:
    chunk = connection.recv(1 << 16)
    if not chunk:
        raise EOFError
    return chunk


def _client_pid(connection: socket.socket) -> int:
    """The client's pid, from the kernel; a client of another user is refused."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid, uid, _ = struct.unpack("3i", credentials)
    if uid != os.getuid():
        raise Refused("another user")
    return pid


def _setting_of(client: int) -> dict:
    """What a worker must set up to stand in for the client; Refused where it cannot."""
    ours, theirs = _status(os.getpid()), _status(client)
    if any(ours.get(field) != theirs.get(field) for field in SAME_STATUS):
        raise Refused("credentials or affinity")
    for name in SAME_FILES:
        if _read(f"/proc/self/{name}") != _read(f"/proc/{client}/{name}"):
            raise Refused(name)
    for name in os.listdir("/proc/self/ns"):
        if os.readlink(f"/proc/self/ns/{name}") != os.readlink(f"/proc/{client}/ns/{name}"):
            raise Refused(f"namespace {name}")
    here, there = os.stat("/proc/self/root"), os.stat(f"/proc/{client}/root")
    if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        raise Refused("root")
    fixed = set(range(1, signal.NSIG)) - signal.valid_signals()  # the C library's own
    if _signals(ours["SigIgn"]) & fixed != _signals(theirs["SigIgn"]) & fixed:
        raise Refused("signals")
    nice = os.getpriority(os.PRIO_PROCESS, client)
    if nice < os.getpriority(os.PRIO_PROCESS, 0):
        raise Refused("niceness")
    limits = {}
    for name in dir(resource):
        if name.startswith("RLIMIT_"):
            limit = getattr(resource, name)
            soft, hard = resource.prlimit(client, limit)
            if _above(hard, resource.getrlimit(limit)[1]):
                raise Refused(name)
            limits[limit] = (soft, hard)
    return {
        "umask": int(theirs["Umask"], 8),
        "nice": nice,
        "limits": limits,
        "ignored": _signals(theirs["SigIgn"]),
        "blocked": _signals(theirs["SigBlk"]),
    }


def _above(limit: int, ceiling: int) -> bool:
    if ceiling == resource.RLIM_INFINITY:
        return False
    return limit == resource.RLIM_INFINITY or limit > ceiling


def _status(pid: int) -> dict[str, str]:
    lines = _read(f"/proc/{pid}/status").splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()


def _signals(mask: str) -> set[int]:
    bits = int(mask, 16)
    return {signum for signum in range(1, signal.NSIG) if bits & (1 << (signum - 1))}


def _work(request: dict, fds: list[int], setting: dict) -> int:
    """In the worker: become the client's command and run it; the status to end with."""
    try:
        _become(request, fds, setting)
    except Exception as error:  # the set-up failed: the command cannot honestly run here
        print(f"{request.get('command')}: command server: {error}", file=sys.stderr)
        return 1
    module = __import__(COMMANDS[request["command"]], fromlist=["main"])
    try:
        status = _exit_status(module.main())
    except SystemExit as end:
        status = _exit_status(end.code)
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    return _finish(status)


def _become(request: dict, fds: list[int], setting: dict) -> None:
    os.setsid()
    here, *streams = fds
    for fd, stream in zip(request["streams"], streams, strict=True):
        os.dup2(stream, fd)
    for fd in {0, 1, 2} - set(request["streams"]):
        os.close(fd)
    os.fchdir(here)
    os.umask(setting["umask"])
    os.setpriority(os.PRIO_PROCESS, 0, setting["nice"])
    for limit, values in setting["limits"].items():
        resource.setrlimit(limit, values)
    _take_signals(setting["ignored"], setting["blocked"])
    os.environ.clear()
    os.environb.update(request["environ"])
    sys.argv = request["argv"]
    stdin, stdout, stderr = request["io"]
    sys.stdin = sys.__stdin__ = _text_stream(0, "r", stdin)
    sys.stdout = sys.__stdout__ = _text_stream(1, "w", stdout)
    sys.stderr = sys.__stderr__ = _text_stream(2, "w", stderr)
    if "random" in sys.modules:  # else every worker draws the server's numbers
        sys.modules["random"].seed()


def _take_signals(ignored: set[int], blocked: set[int]) -> None:
    """The client's dispositions: what it ignored stays ignored, the rest is as a fresh
    command has it (Ctrl-C ends it quietly until its main() runs)."""
    from taskwatcher.cli import _exit_interrupted, _exit_on_swallowed_interrupts

    for signum in range(1, signal.NSIG):
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # those the C library keeps
            signal.signal(signum, signal.SIG_IGN if signum in ignored else signal.SIG_DFL)
    if signal.SIGINT not in ignored:
        signal.signal(signal.SIGINT, _exit_interrupted)
        sys.unraisablehook = _exit_on_swallowed_interrupts
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _text_stream(fd: int, mode: str, settings: tuple | None) -> io.TextIOWrapper | None:
    """A standard stream set up as the client's Python set up its own."""
    if settings is None:
        return None
    encoding, errors, line_buffering, write_through, buffered = settings
    raw = io.FileIO(fd, mode, closefd=False)
    if buffered:  # else unbuffered (`python -u`), as the client's
        raw = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(
        raw,
        encoding=encoding,
        errors=errors,
        line_buffering=line_buffering,
        write_through=write_through,
    )


def _exit_status(code: object) -> int:
    """As the interpreter turns sys.exit's argument into a status."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish(status: int) -> int:
    """What the interpreter does on its way out: wait for threads, run atexit, flush."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                status = status or 120
    return status


if __name__ == "__main__":
    sys.exit(main())
