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

import _signal
import contextlib
import errno
import fcntl
import functools
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

from taskwatcher.cli.start import (
    COMMANDS,
    IDLE_VARIABLE,
    MAGIC,
    descriptors,
    rights,
    server_address,
    socket_name,
    text_encodings,
)

#: Seconds an idle server waits for a command (`$TASKWATCHER_SERVER_IDLE`).
DEFAULT_IDLE = 60.0
#: What the server imports for its workers: twrun and twctl, and the sqlite store they open
#: (twparse, rarely run often, imports what it needs in its worker: logging, say, which a
#: supervisor must not carry).
PREIMPORTED = (COMMANDS["twrun"], COMMANDS["twctl"], "taskwatcher.engine.sqlite_store")
#: A command line each parser reads once in the server, so that what argparse compiles as it
#: parses (its regular expressions, in re's cache) is there for every worker.
WARM_ARGV = {
    "twrun": [["--", "true"], ["--name", "warm", "--", "true"]],
    "twctl": [["list"], ["list", "--json"], ["kill", "1"], ["history"]],
}
#: Seconds the server stops listening when it runs out of descriptors.
DEAF_SECONDS = 0.1
#: Seconds a client has to send its request once connected.
REQUEST_TIMEOUT = 5.0
#: What a worker cannot take on: these lines of /proc/<pid>/status must read the same.
SAME_STATUS = (
    "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
    "Seccomp", "Seccomp_filters", "Cpus_allowed_list", "Mems_allowed_list", "TracerPid",
)  # fmt: skip
#: ... nor these files of /proc/<pid>.
SAME_FILES = ("cgroup", "oom_score_adj", "attr/current", "loginuid")
#: Every resource limit the system has.
LIMITS = tuple(getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_"))
#: Signals the C library keeps for itself: a worker cannot set them as its client had them.
FIXED_SIGNALS = set(range(1, signal.NSIG)) - signal.valid_signals()
#: Every signal there is, as numbers: what the fork and the worker's set-up use `_signal`
#: with, where `signal` would turn each number into an enum and back (some 0.8 ms a command).
ALL_SIGNALS = frozenset(_signal.valid_signals())
#: The largest request taken (arguments and environment), against a runaway client.
MOST_BYTES = 16 << 20


class Refused(Exception):
    """The server cannot stand in for this client: the client runs the command itself."""


def main(argv: list[str] | None = None) -> int:
    """Serve on the socket named (in `start.server_address()`'s folder) until idle; 0 at
    once if another server has it, or if this installation is no longer the one named."""
    (name,) = sys.argv[1:] if argv is None else argv
    _start_clean()
    address = server_address()
    if address is None or address[1] != name:  # not this installation (any more)
        return 0
    folder, _ = address
    lock = os.open(f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=folder)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another server holds this socket (before importing anything)
        return 0
    for module in PREIMPORTED:
        __import__(module)
    for command, lines in WARM_ARGV.items():  # their parsers, once for every worker
        parser = sys.modules[COMMANDS[command]].build_parser()
        for argv in lines:
            parser.parse_args(argv)
    if socket_name() != name:  # the package changed while it was imported
        return 0
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())  # who holds it, for `kill $(cat ...lock)`
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=folder)  # left by a server that was killed (none holds the lock)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"/proc/self/fd/{folder}/{name}")
    listener.listen(64)
    server = Server(listener, folder, name, lock, _idle_seconds())
    gc.collect()
    gc.freeze()  # the workers' collections then leave the shared pages alone
    try:
        server.serve()
    finally:
        server.close()
    return 0


def _start_clean() -> None:
    """Whatever the first client had, the server starts from defaults: every signal as the
    system sets it (an ignored SIGCHLD would reap the workers behind its back), none
    blocked, in the root folder, and no soft limit below its hard one (a worker takes its
    client's own back)."""
    for signum in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.chdir("/")
    for limit in LIMITS:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(limit, (resource.getrlimit(limit)[1],) * 2)


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

    def __init__(
        self, listener: socket.socket, folder: int, name: str, lock: int, idle: float
    ) -> None:
        self.listener: socket.socket | None = listener
        self.folder = folder
        self.name = name
        self.bound = os.stat(name, dir_fd=folder)
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
        #: client fd -> the write end of its worker's go pipe, until the client said go.
        self.starting: dict[int, int] = {}
        from taskwatcher.cli.orphans import Orphans, supported  # after the lock, as the rest
        from taskwatcher.engine.launch import become_subreaper

        #: What workers leave comes here (a subreaper), where this process can see it.
        self.orphans = Orphans(self.poller) if supported() else None
        #: What a worker tells spawn of its parent: this server, when it ends orphans.
        self.reaper = None if self.orphans is None else os.getpid()
        if self.orphans is not None:
            become_subreaper()
        self.deaf = False  # not listening a moment: descriptors ran out
        self.quiet_since = time.monotonic()  # when the last work ended

    def serve(self) -> None:
        """Until no command has run for `idle` seconds (or SIGTERM came) and no worker
        runs."""
        while True:
            busy = bool(self.workers) or self._killing()
            if self.listener is None and not busy:
                return
            wait = None if busy else self.idle - (time.monotonic() - self.quiet_since)
            if wait is not None and wait <= 0:
                return
            if self.deaf:  # out of descriptors: listen again soon
                wait = DEAF_SECONDS if wait is None else min(wait, DEAF_SECONDS)
            events = self.poller.poll(None if wait is None else wait * 1000)
            if self.deaf and self.listener is not None:
                self.poller.modify(self.listener, select.POLLIN)
                self.deaf = False
            for fd, _ in events:
                if fd == self.wakeup:
                    self._woken()
                elif self.listener is not None and fd == self.listener.fileno():
                    self._accept()
                elif fd in self.workers:
                    self._reap(fd)
                elif fd in self.starting:
                    self._go(fd)
                elif fd in self.clients:
                    self._client_gone(fd)
                elif self.orphans is not None and fd in self.orphans:
                    self.orphans.reap(fd, self._worker_pids())

    def close(self) -> None:
        """Take the socket away (if it is still ours) and stop listening."""
        if self.listener is None:
            return
        with contextlib.suppress(OSError):
            now = os.stat(self.name, dir_fd=self.folder)
            if (now.st_dev, now.st_ino) == (self.bound.st_dev, self.bound.st_ino):
                os.unlink(self.name, dir_fd=self.folder)
                os.unlink(f"{self.name}.lock", dir_fd=self.folder)
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
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):  # a while, not in a busy loop
                self.poller.modify(self.listener, 0)
                self.deaf = True
            return
        fds: list[int] = []
        try:
            client = _client_pid(connection)
            request = _read_request(connection, fds, time.monotonic() + REQUEST_TIMEOUT)
            if request["text"] != text_encodings():
                raise Refused("locale")
            setting = _setting_of(client)
            connection.settimeout(5.0)  # for the replies: a client stuck in sending
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
        """Fork the worker; it starts once it is registered and its client has said go
        (knowing it), so a failure before that ends it unstarted and the client runs the
        command itself. Signals wait meanwhile, to reach the worker once it is set up as
        its client. The go is awaited with the other events (`_go`), however late it comes:
        waiting here would hold every other client up, and a go that came just after
        giving up would be lost with the command."""
        go, going = os.pipe2(os.O_CLOEXEC)
        held = _signal.pthread_sigmask(_signal.SIG_BLOCK, ALL_SIGNALS)
        try:
            try:
                pid = os.fork()
            except OSError:
                os.close(going)
                raise
            if pid == 0:  # the worker: whatever happens, it never returns to serving
                status = 1
                try:
                    self._leave()
                    os.close(connection.detach())
                    os.close(going)
                    if os.read(go, 1) == b"!":
                        status = _work(request, fds, setting, self.reaper)
                finally:
                    os._exit(status)
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
            os.close(go)
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)
            reply = b"P" + pid.to_bytes(8, "little")
            sent = connection.sendmsg([reply], [rights([pidfd])])
            connection.sendall(reply[sent:])
        except OSError:
            os.close(going)  # the worker reads nothing and ends, unstarted
            os.waitpid(pid, 0)
            if pidfd >= 0:
                os.close(pidfd)
            raise
        self.workers[pidfd] = (pid, connection)
        self.clients[connection.fileno()] = pidfd
        self.starting[connection.fileno()] = going
        self.poller.register(pidfd, select.POLLIN)
        self.poller.register(connection, select.POLLIN | select.POLLRDHUP)

    def _go(self, fd: int) -> None:
        """The client spoke before its worker started: on its go the worker starts; on
        anything else (it hung up, say) the worker ends unstarted, as the client's death
        ends a command."""
        going = self.starting.pop(fd)
        _, connection = self.workers[self.clients[fd]]
        try:
            said = connection.recv(1, socket.MSG_DONTWAIT)
        except OSError:
            said = b""
        if said == b"G":
            with contextlib.suppress(OSError):  # a worker dead already is reaped as any other
                os.write(going, b"!")
            os.close(going)
            return
        os.close(going)
        self._client_gone(fd)

    def _leave(self) -> None:
        """In a worker: let go of everything the server holds."""
        signal.set_wakeup_fd(-1)
        for pidfd, (_, connection) in self.workers.items():
            os.close(pidfd)
            os.close(connection.detach())
        for going in self.starting.values():  # else a worker waits for this one's end
            os.close(going)
        if self.orphans is not None:
            self.orphans.let_go()
        os.close(self.listener.detach())
        for fd in (self.lock, self.wakeup, self.wakeup_writer, self.folder):
            os.close(fd)

    def _reap(self, pidfd: int) -> None:
        pid, connection = self.workers.pop(pidfd)
        # Idle from the end of the last work, not the last caller: callers it has to
        # refuse (for their niceness, say) would keep it up for ever, serving nobody.
        self.quiet_since = time.monotonic()
        _, status = os.waitpid(pid, 0)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        if self.orphans is not None:  # before its client learns the end, as a death signal
            self.orphans.look(self._worker_pids())
        going = self.starting.pop(connection.fileno(), None)
        if going is not None:  # ended (killed) before its client's go: it ran nothing
            os.close(going)
        if self.clients.pop(connection.fileno(), None) is not None:
            self.poller.unregister(connection)
            reply = b"R" if going is not None else b"W" + status.to_bytes(4, "little")
            with contextlib.suppress(OSError):
                connection.sendall(reply)
        connection.close()

    def _killing(self) -> bool:
        """Whether a task's processes a worker left are still to be reaped."""
        return self.orphans is not None and bool(self.orphans.killed)

    def _worker_pids(self) -> set[int]:
        return {pid for pid, _ in self.workers.values()}

    def _client_gone(self, fd: int) -> None:
        """The client hung up before its worker ended: end the worker, as the client's
        death would have ended the command run in it."""
        pidfd = self.clients.pop(fd)
        self.poller.unregister(fd)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _read_request(connection: socket.socket, fds: list[int], deadline: float) -> dict:
    """The request, whole by `deadline` (one slow client holds the others up that long at
    most); the descriptors that came with it (the client's working folder and standard
    streams) go to `fds`, for the caller to close whatever comes of it."""
    connection.settimeout(max(0.0, deadline - time.monotonic()))
    data, ancillary, _, _ = connection.recvmsg(1 << 16, socket.CMSG_SPACE(4 * 4))
    fds += descriptors(ancillary)
    header = len(MAGIC) + 8
    while len(data) < header:
        data += _more(connection, deadline)
    if not data.startswith(MAGIC):
        raise ValueError("not a request")
    size = int.from_bytes(data[len(MAGIC) : header], "little")
    if size > MOST_BYTES:
        raise ValueError("request too large")
    while len(data) < header + size:
        data += _more(connection, deadline)
    request = marshal.loads(data[header:])
    streams = request["streams"]
    if (
        request["command"] not in COMMANDS
        or not set(streams) <= {0, 1, 2}
        or len(fds) != 1 + len(streams)
        or not all(isinstance(arg, str) for arg in request["argv"])
        or not all(name and b"=" not in name for name in request["environ"])
    ):
        raise ValueError("not a request")
    return request


def _more(connection: socket.socket, deadline: float) -> bytes:
    connection.settimeout(max(0.0, deadline - time.monotonic()))
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
    ours, our_nice, our_hard = _own()
    theirs, status = _standing(client)
    differing = [name for name, value in ours.items() if theirs[name] != value]
    if differing:
        raise Refused(", ".join(differing))
    nice = os.getpriority(os.PRIO_PROCESS, client)
    if nice < our_nice:
        raise Refused("niceness")
    limits = {}
    for limit in LIMITS:
        soft, hard = resource.prlimit(client, limit)
        if _above(hard, our_hard[limit]):
            raise Refused(f"limit {limit}")
        limits[limit] = (soft, hard)
    return {
        "umask": int(status["Umask"], 8),
        "nice": nice,
        "limits": limits,
        "ignored": _signals(status["SigIgn"]),
        "blocked": _signals(status["SigBlk"]),
    }


@functools.cache
def _own() -> tuple[dict[str, object], int, dict[int, int]]:
    """The server's own standing, niceness and hard limits: read once, they do not change."""
    hard = {limit: resource.getrlimit(limit)[1] for limit in LIMITS}
    return _standing(0)[0], os.getpriority(os.PRIO_PROCESS, 0), hard


def _standing(pid: int) -> tuple[dict[str, object], dict[str, str]]:
    """What a worker cannot take on of process `pid` (0: this one), which must be the
    server's own; and its /proc status."""
    proc = f"/proc/{pid or 'self'}"
    lines = _read(f"{proc}/status").splitlines()
    status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    standing: dict[str, object] = {field: status.get(field) for field in SAME_STATUS}
    standing.update((name, _peek(f"{proc}/{name}")) for name in SAME_FILES)
    standing.update(
        (f"namespace {name}", os.readlink(f"{proc}/ns/{name}")) for name in os.listdir(f"{proc}/ns")
    )
    root = os.stat(f"{proc}/root")
    standing["root"] = (root.st_dev, root.st_ino)
    standing["the C library's signals"] = _signals(status["SigIgn"]) & FIXED_SIGNALS
    standing["scheduling"] = _scheduling(pid)
    return standing, status


def _peek(path: str) -> str:
    """A file's text, or the error that reading it gave (no LSM: no label to compare)."""
    try:
        return _read(path)
    except OSError as error:
        return f"error {error.errno}"


def _scheduling(pid: int) -> tuple[int, int, int | None]:
    """Policy, real-time priority and I/O priority (`chrt`, `ionice`)."""
    return os.sched_getscheduler(pid), os.sched_getparam(pid).sched_priority, _io_priority(pid)


#: ioprio_get(2), which Python does not offer, by machine.
_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}


def _io_priority(pid: int) -> int | None:
    number = _IOPRIO_GET.get(os.uname().machine)
    return None if number is None else _libc().syscall(number, 1, pid)  # 1: IOPRIO_WHO_PROCESS


@functools.cache
def _libc() -> object:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _above(limit: int, ceiling: int) -> bool:
    if ceiling == resource.RLIM_INFINITY:
        return False
    return limit == resource.RLIM_INFINITY or limit > ceiling


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()


def _signals(mask: str) -> set[int]:
    bits = int(mask, 16)
    return {signum for signum in range(1, signal.NSIG) if bits & (1 << (signum - 1))}


def _work(request: dict, fds: list[int], setting: dict, server: int | None) -> int:
    """In the worker: become the client's command and run it; the status to end with. Its
    processes come to the `server` when it ends, if it names one (see `orphans`)."""
    if server is not None:
        from taskwatcher.engine.launch import parent_ends_orphans

        parent_ends_orphans(server)
    try:
        _become(request, fds, setting)
        module = __import__(COMMANDS[request["command"]], fromlist=["main"])
        status = _exit_status(module.main())
    except SystemExit as end:  # Ctrl-C before main() ran, say, or main()'s own end
        status = _exit_status(end.code)
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    return _finish(status)


def _become(request: dict, fds: list[int], setting: dict) -> None:
    """Set up as the client: its signals unblocked last, so that one sent meanwhile finds
    the client's handling in place."""
    os.setpgid(0, 0)  # a group of its own, in the server's session (and its autogroup)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(request["command"])  # as `ps`, `pgrep` and `top` name the command
    here, *streams = fds
    for fd, stream in zip(request["streams"], streams, strict=True):
        os.dup2(stream, fd)
    for fd in {0, 1, 2} - set(request["streams"]):
        os.close(fd)
    os.fchdir(here)
    for fd in fds:
        os.close(fd)
    os.umask(setting["umask"])
    os.setpriority(os.PRIO_PROCESS, 0, setting["nice"])
    for limit, values in setting["limits"].items():
        resource.setrlimit(limit, values)
    os.environ.clear()
    os.environb.update(request["environ"])
    time.tzset()
    sys.argv = request["argv"]
    stdin, stdout, stderr = request["io"]
    sys.stdin = sys.__stdin__ = _text_stream(0, "r", stdin)
    sys.stdout = sys.__stdout__ = _text_stream(1, "w", stdout)
    sys.stderr = sys.__stderr__ = _text_stream(2, "w", stderr)
    if "random" in sys.modules:  # else every worker draws the server's numbers
        sys.modules["random"].seed()
    _take_signals(setting["ignored"], setting["blocked"])


def _take_signals(ignored: set[int], blocked: set[int]) -> None:
    """The client's dispositions: what it ignored stays ignored, the rest is as a fresh
    command has it (Ctrl-C ends it quietly until its main() runs); then its mask."""
    from taskwatcher.cli import _exit_interrupted, _exit_on_swallowed_interrupts

    for signum in ALL_SIGNALS - {signal.SIGKILL, signal.SIGSTOP}:
        _signal.signal(signum, _signal.SIG_IGN if signum in ignored else _signal.SIG_DFL)
    if signal.SIGINT not in ignored:
        _signal.signal(signal.SIGINT, _exit_interrupted)
        sys.unraisablehook = _exit_on_swallowed_interrupts
    _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)


def _text_stream(fd: int, mode: str, settings: tuple | None) -> io.TextIOWrapper | None:
    """A standard stream set up as the client's Python set up its own: buffered to the
    file's block size (unless `python -u`), newlines as they come."""
    if settings is None:
        return None
    encoding, errors, line_buffering, write_through, buffered = settings
    binary = open(fd, f"{mode}b", buffering=-1 if buffered else 0, closefd=False)  # noqa: SIM115
    return io.TextIOWrapper(
        binary,
        encoding=encoding,
        errors=errors,
        newline="\n",
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
