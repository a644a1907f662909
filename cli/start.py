"""How a console script starts: in this process, or forked by the command server.

With `TASKWATCHER_SERVER=1` a command asks the user's command server (`cli.server`), an
interpreter that imported the package once, to fork it a process that runs the command with
this one's arguments, environment, working folder, standard streams and limits. It then only
waits, passing on the signals it gets and ending as that process ended. The server decides
whether it can stand in for this process (same credentials, cgroup, namespaces...); when it
cannot, or there is none yet, the command runs here as it always does (and a missing server
is started for the next one). This module is all a served command imports, so it holds to
what the interpreter has loaded already and a few built-in modules (not even `__future__`).
"""

import _signal  # built in, where signal would first build its enums
import _socket
import marshal
import os
import sys

from taskwatcher.cli import flush_streams  # the package the console script came through

#: Set to 1 to have commands forked by the command server.
SERVER_VARIABLE = "TASKWATCHER_SERVER"
#: Seconds an idle server waits for its next command before it ends.
IDLE_VARIABLE = "TASKWATCHER_SERVER_IDLE"
#: The first bytes of a request: the protocol's version, so an old server refuses a new one.
MAGIC = b"TWS1"
#: Seconds a command waits for the server to take it, before it runs the command itself.
TAKE_SECONDS = 10.0
#: The signals a waiting command hands on to the process that runs it, as twrun or twctl
#: would get them (SIGTSTP is not among them: Ctrl-Z stops the command, not its work, as it
#: stops twrun and not its task).
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
#: The interpreter's flags a server must share with a command (all but -P, safe_path).
FLAGS = (
    "optimize", "isolated", "ignore_environment", "no_user_site", "no_site", "utf8_mode",
    "dev_mode", "bytes_warning", "int_max_str_digits", "warn_default_encoding",
)  # fmt: skip
#: A file to which twrun writes, as it ends, the modules it held (what a supervisor carries
#: for hours); a served command's caller writes its own to the same name + ".caller".
DUMP_MODULES_VARIABLE = "TASKWATCHER_DUMP_MODULES"
#: The commands a server runs: console script name -> module with its main().
COMMANDS = {name: f"taskwatcher.cli.{name}" for name in ("twrun", "twctl", "twparse")}


def twrun() -> int:
    """Console script `twrun`."""
    return _command("twrun")


def twctl() -> int:
    """Console script `twctl`."""
    return _command("twctl")


def twparse() -> int:
    """Console script `twparse`."""
    return _command("twparse")


def _command(name: str) -> int:
    if os.environ.get(SERVER_VARIABLE) == "1":
        status = _served(name)
        if status is not None:
            _leave(status)
    module = __import__(COMMANDS[name], fromlist=["main"])
    return module.main()


def _leave(status: int) -> None:
    """End now, as the served command ended: the work was done elsewhere, and nothing here
    needs the interpreter's orderly shutdown (its last collection and teardown take about
    3 ms, a fifth of a bare interpreter's whole run)."""
    dump_modules(".caller")
    flush_streams()
    os._exit(status)


def dump_modules(suffix: str = "") -> None:
    """The modules this process holds, one per line, to $TASKWATCHER_DUMP_MODULES + suffix:
    the tests' view of what a command imports."""
    path = os.environ.get(DUMP_MODULES_VARIABLE)
    if path:
        with open(path + suffix, "w", encoding="utf-8") as dump:
            dump.write("".join(f"{name}\n" for name in sorted(sys.modules)))


def server_address() -> tuple[int, str] | None:
    """The server's folder, opened (O_PATH), and its socket's name there; None when there is
    no folder only this user can enter.

    The folder is `$XDG_RUNTIME_DIR/taskwatcher`, else `/tmp/taskwatcher-<uid>`. It is
    checked through the descriptor, and the socket reached through it too
    (`/proc/self/fd/N/NAME`), so nothing renamed or planted on the way can put another
    socket in its place.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        folder = os.path.join(runtime, "taskwatcher")
    else:
        folder = f"/tmp/taskwatcher-{os.getuid()}"
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        handle = os.open(folder, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    status = os.fstat(handle)
    # A folder another user made, or one others may write to, could hold their socket.
    if status.st_mode & 0o077 or status.st_uid != os.getuid():
        os.close(handle)
        return None
    return handle, socket_name()


def socket_name() -> str:
    """The server's socket, named by the fingerprint of this interpreter and installation."""
    return f"server-{fingerprint():08x}.sock"


def fingerprint() -> int:
    """What a server must share with a command to run it: the interpreter, its flags (but
    -P), options and import path, the environment that steers Python and the loader, and
    the package's files and site-packages folders as they are now (an upgrade, an edit or
    another package installed gets a new server; the old one ends when idle)."""
    import zlib

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    stamps = []
    for part in ("cli", "engine", "grammar"):
        with os.scandir(os.path.join(package, part)) as entries:
            for entry in entries:
                if entry.name.endswith((".py", ".lark", ".json")):
                    stamps.append(f"{entry.name}:{entry.stat().st_mtime_ns}")
    flags = [getattr(sys.flags, name) for name in FLAGS]
    # sys.path[0] is the script's folder; the server, started with -P, has none.
    path = sys.path if sys.flags.safe_path else sys.path[1:]
    for folder in path:  # a package installed or removed there changes the folder
        if os.path.basename(folder) not in ("site-packages", "dist-packages"):
            continue  # a project's folder on PYTHONPATH changes as work is done in it
        try:  # noqa: SIM105  (contextlib would cost a served command more than the rest)
            stamps.append(f"{folder}:{os.stat(folder).st_mtime_ns}")
        except OSError:
            pass
    steering = sorted(
        f"{key}={value}" for key, value in os.environ.items() if key.startswith(("PYTHON", "LD_"))
    )
    options = [*sys.warnoptions, *map(str, sys._xoptions.items())]
    identity = [sys.executable, sys.version, *map(str, flags), *path, *options, *steering]
    identity += sorted(stamps)
    return zlib.crc32("\0".join(identity).encode("utf-8", "surrogateescape"))


def _served(name: str) -> int | None:
    """The command run by the server: the status to end with, or None to run it here."""
    streams = [fd for fd in (0, 1, 2) if _is_open(fd)]  # before this makes descriptors
    address = server_address()
    if address is None:
        return None
    folder, socket_name = address
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.connect(f"/proc/self/fd/{folder}/{socket_name}")
    except OSError:
        connection.close()
        _start_server(socket_name)
        return None
    finally:
        os.close(folder)
    try:
        return _run_by_server(connection, name, streams)
    finally:
        connection.close()


def _run_by_server(connection: _socket.socket, name: str, streams: list[int]) -> int | None:
    """Hand the command over; None if the server refused it, failed before taking it, took
    longer than TAKE_SECONDS, or a signal came first: this process then runs it (or ends by
    that signal), as it would have without a server. The worker starts only on this
    process's go, once it knows the worker; so a command is never run twice."""
    pending: list[int] = []
    worker = [-1]  # its pidfd, once the server has said it took the command

    def forward(signum: int, frame: object) -> None:
        if worker[0] < 0:
            pending.append(signum)
            if signum != _signal.SIGWINCH:  # one that would end or stop the command
                raise _Interrupted
            return
        try:  # noqa: SIM105
            _signal.pidfd_send_signal(worker[0], signum)
        except OSError:  # ended already (a pidfd never names another process)
            pass

    before = {}
    for signame in FORWARDED:
        signum = getattr(_signal, signame)
        before[signum] = _signal.getsignal(signum)
        if before[signum] is not _signal.SIG_IGN:
            _signal.signal(signum, forward)
    handles: list[int] = []
    pidfd = -1
    try:
        connection.settimeout(TAKE_SECONDS)
        _send_request(connection, name, streams)
        reply, handles = _receive(connection, 9, with_handle=True)
        if reply[:1] == b"P":
            # No signal between the go and knowing the worker: each one reaches either
            # this process (not taken) or the worker (taken), never one that never runs.
            # The mask is read first, blocking nothing: a signal's handler may raise as
            # soon as a call returns, and the block must then be undone all the same.
            held = _signal.pthread_sigmask(_signal.SIG_BLOCK, ())
            try:
                _signal.pthread_sigmask(_signal.SIG_BLOCK, before)
                pidfd, handles = _worker_handle(reply, handles), []
                connection.sendall(b"G")
                worker[0] = pidfd
            finally:
                _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
        connection.settimeout(None)
    except (OSError, _Interrupted):
        pass
    if worker[0] < 0:  # not taken: this process runs the command, as it was
        return _take_back([*handles, pidfd], before, pending)
    for signum in pending:
        forward(signum, None)
    try:
        ended, _ = _receive(connection, 5)
    except OSError:
        ended = b""
    if ended[:1] == b"R":  # its worker ended (was killed) before it could start: ran nothing
        return _take_back([worker[0]], before, pending)
    if ended[:1] != b"W":  # the server was killed: wait for the worker all the same
        _wait_for(worker[0])
        print(f"{name}: the command server was killed: how it ended is unknown", file=sys.stderr)
        return 1
    return _end_as(int.from_bytes(ended[1:], "little"))


def _take_back(handles: list[int], before: dict, pending: list[int]) -> None:
    """The command was not taken: close what the handover left, put the signals back as
    they were and let those that came meanwhile act; this process then runs it."""
    for handle in handles:
        if handle >= 0:
            os.close(handle)
    for signum, handler in before.items():
        _signal.signal(signum, handler)
    for signum in pending:
        _signal.raise_signal(signum)


class _Interrupted(Exception):
    """A signal came before the server took the command."""


def _worker_handle(reply: bytes, handles: list[int]) -> int:
    """The worker's pidfd: the one sent with the reply, else one opened from its pid (it
    waits for this process's go, so the pid is still its own)."""
    for extra in handles[1:]:
        os.close(extra)
    if handles:
        return handles[0]
    return os.pidfd_open(int.from_bytes(reply[1:], "little"))


def _send_request(connection: _socket.socket, name: str, streams: list[int]) -> None:
    """The command, with this process's working folder and standard streams."""
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        payload = marshal.dumps(
            {
                "command": name,
                "argv": sys.argv,
                "environ": dict(os.environb),
                "streams": streams,
                "io": [_stream_settings(stream) for stream in (sys.stdin, sys.stdout, sys.stderr)],
                "text": text_encodings(),
            }
        )
        request = MAGIC + len(payload).to_bytes(8, "little") + payload
        sent = connection.sendmsg([request], [rights([here, *streams])])
        connection.sendall(request[sent:])
    finally:
        os.close(here)


def _receive(
    connection: _socket.socket, size: int, *, with_handle: bool = False
) -> tuple[bytes, list[int]]:
    """`size` bytes (fewer at the end of the stream), and the descriptors sent with them."""
    data, handles = b"", []
    while len(data) < size:
        chunk, ancillary, _, _ = connection.recvmsg(
            size - len(data), _socket.CMSG_SPACE(4) if with_handle else 0
        )
        handles += descriptors(ancillary)
        if not chunk:
            break
        data += chunk
    return data, handles


def _wait_for(pidfd: int) -> None:
    """Until the process of `pidfd` (not a child of this one) has ended."""
    import select

    select.select([pidfd], [], [])


def _end_as(wait_status: int) -> int:
    """The status to end with: the worker's exit status, or its death by the same signal
    (without a second core dump: the worker's is the one)."""
    if os.WIFSIGNALED(wait_status):
        import resource

        signum = os.WTERMSIG(wait_status)
        flush_streams()
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        if signum != _signal.SIGKILL:  # the one signal whose handling cannot be set
            _signal.signal(signum, _signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return 128 + signum
    return os.waitstatus_to_exitcode(wait_status)


def text_encodings() -> list[str]:
    """The encodings this interpreter chose at its start from the locale, which a worker
    cannot choose again: file names, and files opened without an encoding."""
    import _locale

    return [sys.getfilesystemencoding(), sys.getfilesystemencodeerrors(), _locale.getencoding()]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def rights(fds: list[int]) -> tuple[int, int, bytes]:
    """The ancillary item of a message that sends `fds` along (SCM_RIGHTS)."""
    payload = b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)
    return _socket.SOL_SOCKET, _socket.SCM_RIGHTS, payload


def descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors a message's ancillary items brought (SCM_RIGHTS)."""
    found = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % 4
            found += [
                int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True)
                for i in range(0, whole, 4)
            ]
    return found


def _stream_settings(stream: object) -> tuple | None:
    """How Python set up this standard stream here, for the worker to set it up the same."""
    if stream is None:
        return None
    return (
        stream.encoding,
        stream.errors,
        stream.line_buffering,
        getattr(stream, "write_through", False),
        type(stream.buffer).__name__ != "FileIO",
    )


def server_environment() -> dict[str, str]:
    """What a server starts with: this environment but a task's own variables (a twrun
    looking for what its task left would take the server for it) and the notify socket."""
    return {
        key: value
        for key, value in os.environ.items()
        if key == IDLE_VARIABLE or not key.startswith(("TASKWATCHER_", "NOTIFY_SOCKET"))
    }


def _start_server(socket_name: str) -> None:
    """Start a server for the next command (this one runs here): detached, in a session
    of its own, holding none of this process's files open. Not from within a task: its
    twrun adopts orphans, and would end the server with the task.

    A child that ends at once starts it, so the server is nobody's child here: the command
    that started it (twrun ends every process its run left) neither waits for it nor ends
    it. fork and exec rather than posix_spawn, which leaves the C library's own signals
    ignored in what it starts, where a worker could not set them back.
    """
    if "TASKWATCHER_TOKEN" in os.environ:
        return
    # The interpreter's options as this command got them, and -P: a server imports nothing
    # from the folder it was started in.
    script = sys.orig_argv.index(sys.argv[0]) if sys.argv[0] in sys.orig_argv else 1
    options = [option for option in sys.orig_argv[1:script] if option != "-P"]
    argv = [sys.executable, *options, "-P", "-m", "taskwatcher.cli.server", socket_name]
    environment = server_environment()
    try:
        starter = os.fork()
    except OSError:
        return  # no server: every command runs in its own process, as without one
    if starter == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                os.execve(sys.executable, argv, environment)
        finally:
            os._exit(0)
    try:  # noqa: SIM105
        os.waitpid(starter, 0)
    except ChildProcessError:  # SIGCHLD ignored here: the system reaped it
        pass
