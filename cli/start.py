"""How a console script starts: in this process, or forked by the command server.

With `TASKWATCHER_SERVER=1` a command asks the user's command server (`cli.server`), an
interpreter that imported the package once, to fork it a process that runs the command with
this one's arguments, environment, working folder, standard streams and limits. It then only
waits, passing on the signals it gets and ending as that process ended. The server decides
whether it can stand in for this process (same credentials, cgroup, namespaces...); when it
cannot, or there is none yet, the command runs here as it always does (and a missing server
is started for the next one). This module is all a served command imports, so it holds to
what the interpreter has loaded already and a few built-in modules.
"""

from __future__ import annotations

import _signal  # built in, where signal would first build its enums
import _socket
import marshal
import os
import sys

#: Set to 1 to have commands forked by the command server.
SERVER_VARIABLE = "TASKWATCHER_SERVER"
#: Seconds an idle server waits for its next command before it ends.
IDLE_VARIABLE = "TASKWATCHER_SERVER_IDLE"
#: The first bytes of a request: the protocol's version, so an old server refuses a new one.
MAGIC = b"TWS1"
#: The signals a waiting command hands on to the process that runs it, as twrun or twctl
#: would get them (SIGTSTP is not among them: Ctrl-Z stops the command, not its work, as it
#: stops twrun and not its task).
FORWARDED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGWINCH")
#: The interpreter's flags a server must share with a command (all but -P, safe_path).
FLAGS = (
    "optimize", "isolated", "ignore_environment", "no_user_site", "no_site", "utf8_mode",
    "dev_mode", "bytes_warning", "int_max_str_digits", "warn_default_encoding",
)  # fmt: skip
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
            return status
    module = __import__(COMMANDS[name], fromlist=["main"])
    return module.main()


def socket_path() -> str | None:
    """The server's socket for this interpreter and installation, in a folder only this
    user can enter; None when there is no such folder (or the path is too long for one)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/taskwatcher-{os.getuid()}"
    folder = os.path.join(base, "taskwatcher") if "XDG_RUNTIME_DIR" in os.environ else base
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        status = os.lstat(folder)
    except OSError:
        return None
    # A folder another user made, or one others may write to, could hold their socket.
    if (status.st_mode & 0o170077) != 0o040000 or status.st_uid != os.getuid():
        return None
    path = os.path.join(folder, f"server-{fingerprint():08x}.sock")
    return path if len(os.fsencode(path)) < 108 else None


def fingerprint() -> int:
    """What a server must share with a command to run it: the interpreter, its flags (but
    -P) and import path, and the package's files as they are now (an upgrade or an edit gets
    a new server; the old one ends when idle)."""
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
    identity = [sys.executable, sys.version, *map(str, flags), *path, *sorted(stamps)]
    return zlib.crc32("\0".join(identity).encode("utf-8", "surrogateescape"))


def _served(name: str) -> int | None:
    """The command run by the server: the status to end with, or None to run it here."""
    path = socket_path()
    if path is None:
        return None
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        _start_server(path)
        return None
    try:
        return _run_by_server(connection, name)
    finally:
        connection.close()


def _run_by_server(connection: _socket.socket, name: str) -> int | None:
    """Hand the command over; None if the server refused it (or failed before taking it):
    this process then runs it, as it would have without a server. Once taken, it is never
    run here too."""
    pending: list[int] = []
    worker = [0]

    def forward(signum: int, frame: object) -> None:
        if worker[0]:
            os.kill(worker[0], signum)
        else:
            pending.append(signum)

    before = {}
    for signame in FORWARDED:
        signum = getattr(_signal, signame)
        before[signum] = _signal.getsignal(signum)
        if before[signum] is not _signal.SIG_IGN:
            _signal.signal(signum, forward)
    try:
        _send_request(connection, name)
        reply = _receive(connection, 9)
    except OSError:
        reply = b""
    if reply[:1] != b"P":  # refused: this process runs the command, as it was
        for signum, handler in before.items():
            _signal.signal(signum, handler)
        for signum in pending:
            _signal.raise_signal(signum)
        return None
    worker[0] = int.from_bytes(reply[1:], "little")
    for signum in pending:
        os.kill(worker[0], signum)
    try:
        ended = _receive(connection, 5)
    except OSError:
        ended = b""
    if ended[:1] != b"W":  # the server was killed: wait for the worker all the same
        _wait_for(worker[0])
        print(f"{name}: the command server was killed: how it ended is unknown", file=sys.stderr)
        return 1
    return _end_as(int.from_bytes(ended[1:], "little"))


def _send_request(connection: _socket.socket, name: str) -> None:
    """The command, with this process's working folder and standard streams."""
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        streams = [fd for fd in (0, 1, 2) if _is_open(fd)]
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
        sent = connection.sendmsg(
            [request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _fds_bytes([here, *streams]))]
        )
        connection.sendall(request[sent:])
    finally:
        os.close(here)


def _receive(connection: _socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _wait_for(pid: int) -> None:
    """Until `pid` (not a child of this process) has ended."""
    import select

    try:
        handle = os.pidfd_open(pid)
    except OSError:  # gone already
        return
    try:
        select.select([handle], [], [])
    finally:
        os.close(handle)


def _end_as(wait_status: int) -> int:
    """The status to end with: the worker's exit status, or its death by the same signal."""
    if os.WIFSIGNALED(wait_status):
        signum = os.WTERMSIG(wait_status)
        sys.stdout.flush()
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


def _fds_bytes(fds: list[int]) -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


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


def _start_server(path: str) -> None:
    """Start a server for the next command (this one runs here): detached, in a session
    of its own, holding none of this process's files open.

    A child that ends at once starts it, so the server is nobody's child here: the command
    that started it (twrun ends every process its run left) neither waits for it nor ends
    it. fork and exec rather than posix_spawn, which leaves the C library's own signals
    ignored in what it starts, where a worker could not set them back.
    """
    # The interpreter's options as this command got them, and -P: a server imports nothing
    # from the folder it was started in.
    script = sys.orig_argv.index(sys.argv[0]) if sys.argv[0] in sys.orig_argv else 1
    options = [option for option in sys.orig_argv[1:script] if option != "-P"]
    argv = [sys.executable, *options, "-P", "-m", "taskwatcher.cli.server", path]
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
                os.execv(sys.executable, argv)
        finally:
            os._exit(0)
    os.waitpid(starter, 0)
