"""Starting a task's command: its own process group, tied to the supervisor's life, 126/127 errors.

Linux-specific parts (`prctl`) go through ctypes because the standard library has no binding.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence

from taskwatcher.engine.errors import LaunchError, SupervisorUnusable

#: prctl(2) options, from <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: What the child receives when its supervisor dies before stopping it.
#:
#: SIGKILL, not SIGTERM: the death signal only fires when the supervisor ended without running
#: its own shutdown (it was SIGKILLed, crashed, or was OOM-killed), because a supervisor that
#: exits normally has already stopped the task with SIGTERM, a grace period and SIGKILL. Once
#: the supervisor is gone nobody enforces a heartbeat timeout or a grace period any more, so a
#: task that catches or ignores SIGTERM would run on unsupervised, which is exactly what
#: `die_with_parent` exists to prevent.
PARENT_DEATH_SIGNAL = signal.SIGKILL

#: File descriptors a supervisor may hold at once (database and journal, signal pipe, wake
#: and notify sockets, pidfds, the feedback file, the log, the writers' doorbell pipe, both
#: ends of the output pipes while launching, /proc entries, the launch's pipe), with a margin.
DESCRIPTORS_NEEDED = 24

#: Shell conventions (and DESIGN's twrun exit codes) for a command that could not start.
NOT_EXECUTABLE = 126
NOT_FOUND = 127

_LIBC = ctypes.CDLL(None, use_errno=True)

#: The pid of a parent that ends whatever this process leaves behind when it dies (see
#: `parent_ends_orphans`); None: no such parent.
_reaping_parent: int | None = None


def parent_ends_orphans(parent_pid: int) -> None:
    """Say that `parent_pid`, a subreaper, ends every process this one leaves when it dies
    (the command server does, for its workers). While it is this process's parent, spawn
    arms no death signal: no Python code then runs between fork and exec, so the command
    starts by vfork, and the caller's memory is not made copy-on-write again (for a
    `twrun -- true`, some 1,100 page faults and a tenth of its CPU time)."""
    global _reaping_parent
    _reaping_parent = parent_pid


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    *,
    die_with_parent: bool = True,
    pipes: int = 0,
    stdin: int | None = None,
) -> tuple[subprocess.Popen, tuple[int, ...]]:
    """Start argv exactly as given (no shell) as leader of a new process group, with the
    read ends (the caller's to close) of the `pipes` its output goes to: 0, it inherits
    stdout and stderr; 1, both go to one pipe, whose order is then exactly theirs; 2, one
    each, stdout first. stdin is inherited unless given (`subprocess.DEVNULL`).

    The own group lets the whole task be signalled with one killpg() and keeps terminal
    signals meant for the supervisor away from it. env None inherits the caller's environment.

    die_with_parent arms PR_SET_PDEATHSIG (PARENT_DEATH_SIGNAL) between fork and exec. The
    kernel ties it to the *thread* that forked, so spawn from the supervisor's main thread; it
    reaches only the direct child (the rest of the group is found later with `remnants()`) and
    the kernel drops it when the command is set-uid or has file capabilities. It is not armed
    while a parent that ends orphans is there to do more (`parent_ends_orphans`).

    Raises LaunchError (exit_code 127 not found, 126 not executable) when the exec fails.
    """
    if not argv:
        raise ValueError("argv must name a command")
    armed = die_with_parent and os.getppid() != _reaping_parent
    arm_death_signal = _death_signal_arming(os.getpid()) if armed else None
    # Pipes of our own rather than Popen's: their read ends are the supervisor's to close.
    made = [os.pipe2(os.O_CLOEXEC) for _ in range(pipes)]
    writers = [write for _, write in made] or [None]
    try:
        child = subprocess.Popen(
            list(argv),
            env=env,
            process_group=0,
            close_fds=True,
            preexec_fn=arm_death_signal,
            stdin=stdin,
            stdout=writers[0],
            stderr=writers[-1],
        )
    except OSError as error:
        for read, _ in made:
            os.close(read)
        if error.filename is None:  # failed before exec (fork, pipes): not the command's fault
            raise
        raise _launch_error(error, argv[0], env) from error
    finally:
        for _, write in made:
            os.close(write)
    return child, tuple(read for read, _ in made)


def become_subreaper() -> None:
    """Adopt orphaned descendants instead of init (PR_SET_CHILD_SUBREAPER).

    Processes that double-fork or setsid() away from the task then stay descendants of the
    caller, where cleanup can still find them (`terminate_task(..., adopter=os.getpid())`).
    The caller inherits their exit statuses too: collect them with `reap_adopted()`.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, value: int) -> None:
    """Call prctl(2); OSError like the os module's own wrappers."""
    prctl = getattr(_LIBC, "prctl", None)
    if prctl is None:
        raise OSError(errno.ENOSYS, "prctl is Linux-only")
    if prctl(
        option, ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)
    ):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _death_signal_arming(parent_pid: int) -> Callable[[], None]:
    """The preexec hook run in the child: arm the death signal, then close the race with exit.

    If the parent died between fork and prctl, the signal will never come: the child then
    has another parent already, and delivers the death signal to itself.
    """

    def arm() -> None:
        _prctl(PR_SET_PDEATHSIG, PARENT_DEATH_SIGNAL)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), PARENT_DEATH_SIGNAL)

    return arm


def _launch_error(error: OSError, command: str, env: Mapping[str, str] | None) -> LaunchError:
    """Word an exec failure the way a shell would, with its 126/127 exit code."""
    found = _locate(command, env)
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        if found is None:
            return LaunchError(f"command not found: {command}", NOT_FOUND)
        # The file exists, so what is missing is its #! interpreter or ELF loader.
        return LaunchError(f"not executable: {command} (bad interpreter)", NOT_EXECUTABLE)
    if found is not None and os.path.isdir(found):
        return LaunchError(f"not executable: {command} (is a directory)", NOT_EXECUTABLE)
    if error.errno in (errno.EACCES, errno.EPERM):
        return LaunchError(f"permission denied: {command}", NOT_EXECUTABLE)
    reason = "exec format error" if error.errno == errno.ENOEXEC else error.strerror
    return LaunchError(f"not executable: {command} ({reason})", NOT_EXECUTABLE)


def _locate(command: str, env: Mapping[str, str] | None) -> str | None:
    """The path exec tried for command: as given when it has a slash, else first on PATH."""
    if os.sep in command:
        return command if os.path.exists(command) else None
    candidates = (os.path.join(folder, command) for folder in os.get_exec_path(env))
    return next((path for path in candidates if os.path.exists(path)), None)


def check_descriptors(limits: tuple[int, int] | None = None) -> None:
    """Refuse to start with too few free file descriptors, before anything is reserved.

    Short of them mid-way, a supervisor could neither watch its task nor record its end.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE) if limits is None else limits
    if soft == resource.RLIM_INFINITY:
        return
    used = len(os.listdir("/proc/self/fd")) - 1  # the listing's own descriptor
    if soft - used < DESCRIPTORS_NEEDED:
        raise SupervisorUnusable(
            f"too few file descriptors: the limit (ulimit -n) is {soft} and {used} are open;"
            f" twrun needs {DESCRIPTORS_NEEDED} free"
        )
