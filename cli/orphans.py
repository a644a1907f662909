"""What the command server's workers leave behind: the server is their subreaper, so what a
worker still had running when it ended comes to the server. A task's processes among them
are killed (a worker that was killed never ended its task), the rest are only reaped once
they end (a daemon a hook started on purpose, another server), as init would.

A served supervisor counts on this instead of a death signal (`engine.launch`), so it holds
where the server can see its own children as they are, and only there (`supported`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal

from taskwatcher.engine.ownership import carries_any_token


def supported() -> bool:
    """Whether this process can list its children: /proc shows them
    (CONFIG_PROC_CHILDREN), and numbers them as this process does (its own pid namespace)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid()) and os.path.exists(
            f"/proc/self/task/{os.getpid()}/children"
        )
    except OSError:
        return False


class Orphans:
    """The processes that came to the server, each watched through a pidfd in `poller`."""

    def __init__(self, poller: select.poll) -> None:
        self._poller = poller
        self._session = os.getsid(0)
        #: pidfd -> pid: a task's, killed, not reaped yet (the server waits for them).
        self.killed: dict[int, int] = {}
        #: pidfd -> pid: another's, reaped when it ends (the server does not wait for it).
        self.kept: dict[int, int] = {}

    def __contains__(self, pidfd: int) -> bool:
        return pidfd in self.killed or pidfd in self.kept

    def look(self, workers: set[int]) -> None:
        """Take in the children that are not `workers`: kill those of a task, with their
        process group when they lead one (where the rest of the task is)."""
        known = workers | set(self.killed.values()) | set(self.kept.values())
        for pid in _children() - known:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # out of descriptors: taken in at the next look
                continue
            if not _is_child(pidfd):  # not ours after all: leave it alone
                os.close(pidfd)
                continue
            leader = _leads_a_group(pid)
            if self._of_a_task(pid, leader):
                with contextlib.suppress(OSError):  # not reaped: its pid is its own
                    if leader:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                self.killed[pidfd] = pid
            else:
                self.kept[pidfd] = pid
            self._poller.register(pidfd, select.POLLIN)

    def reap(self, pidfd: int, workers: set[int]) -> None:
        """One of them ended: reap it, and take in what it had started (it came here)."""
        pid = self.killed.pop(pidfd) if pidfd in self.killed else self.kept.pop(pidfd)
        self._poller.unregister(pidfd)
        os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        self.look(workers)

    def let_go(self) -> None:
        """In a worker: close the server's descriptors of them."""
        for pidfd in [*self.killed, *self.kept]:
            os.close(pidfd)

    def _of_a_task(self, pid: int, leader: bool) -> bool:
        """A process some twrun started: one holding a task's token, or what spawn starts, a
        group leader in the server's session (a task that cleared its environment too)."""
        try:
            if leader and os.getsid(pid) == self._session:
                return True
        except OSError:
            return False
        return carries_any_token(pid)


def _leads_a_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _children() -> set[int]:
    """This process's children, those of every thread (what could be read of them)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for thread in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{thread}/children") as file:
                found.update(map(int, file.read().split()))
    return found


def _is_child(pidfd: int) -> bool:
    """Whether the process is this one's child (waitid refuses any other), not reaping it."""
    try:
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True
