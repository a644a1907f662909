"""A descriptor that turns readable when a child exits, so a supervisor can sleep in poll().

The supervisor waits in select/poll on this and on its signal pipe, with a timeout up to its
next deadline: the child's exit wakes it at once, and an idle task costs no CPU. Watching
never reaps: the exit status stays with the Popen object (`child.poll()` after a wakeup).
"""

from __future__ import annotations

import errno
import os
import signal
from contextlib import suppress

TYPE_CHECKING = False
if TYPE_CHECKING:  # twctl looks at pidfds too, and need not import subprocess for it
    import subprocess
    from types import FrameType


def open_pidfd(pid: int) -> int | None:
    """A pidfd for pid (Linux >= 5.3), or None where the kernel or Python lacks pidfd_open.

    ProcessLookupError when no process has that pid.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        return pidfd_open(pid)
    except OSError as error:
        if error.errno == errno.ENOSYS:
            return None
        raise


class ChildWatch:
    """Readable once `child` has exited: a pidfd, or a SIGCHLD-fed pipe on older kernels.

    Create it before anything reaps the child. use_pidfd=False forces the fallback (it
    installs a SIGCHLD handler, so it works in the main thread only).
    """

    def __init__(self, child: subprocess.Popen, *, use_pidfd: bool = True) -> None:
        pidfd = open_pidfd(child.pid) if use_pidfd else None
        self._fallback = _SigchldPipe(child.pid) if pidfd is None else None
        self._fd = self._fallback.read_fd if self._fallback is not None else pidfd

    def fileno(self) -> int:
        """The descriptor to select/poll for readability (the select module calls this too)."""
        return self._fd

    def close(self) -> None:
        """Release the descriptor (and the SIGCHLD handler of the fallback); idempotent."""
        if self._fd < 0:
            return
        if self._fallback is None:
            os.close(self._fd)
        else:
            self._fallback.close()
        self._fd = -1

    def __enter__(self) -> ChildWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _SigchldPipe:
    """A pipe written to by a SIGCHLD handler once one particular child has exited.

    While the main thread blocks in select/poll, SIGCHLD interrupts it; Python runs this
    handler and retries the call (PEP 475), which then finds the pipe readable.
    """

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous = signal.signal(signal.SIGCHLD, self._on_sigchld)
        self._wake_if_exited()  # the child may have exited before the handler was in place

    def _on_sigchld(self, signum: int, frame: FrameType | None) -> None:
        self._wake_if_exited()
        if callable(self._previous):
            self._previous(signum, frame)

    def _wake_if_exited(self) -> None:
        if _has_exited(self._pid):
            with suppress(BlockingIOError):  # a full pipe is readable already
                os.write(self._write_fd, b"x")

    def close(self) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL if self._previous is None else self._previous)
        os.close(self.read_fd)
        os.close(self._write_fd)


def _has_exited(pid: int) -> bool:
    """True once the child has exited, without reaping it (WNOWAIT) or blocking."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped by its owner
        return True
