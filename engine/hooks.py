"""Commands run once a task is archived (`twrun --on-exit`, `--on-failure`).

A hook is told how the task ended through its environment; it runs after the record is
written, so nothing it does (hang, fail, crash) can change what history says or what twrun
exits with. The final feedback goes in a file, not a variable: one could exceed the 128 KiB
Linux allows a single environment string.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence

from taskwatcher.engine import process
from taskwatcher.engine.errors import InvalidRequest, LaunchError
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.notify import private_folder
from taskwatcher.engine.records import Ended
from taskwatcher.engine.signals import KILL_REQUEST_SIGNAL
from taskwatcher.engine.stopping import twrun_exit_code
from taskwatcher.grammar import jsoncodec
from taskwatcher.grammar.datatype import datatype

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Seconds a hook may run before it is stopped, unless `--hook-timeout` says otherwise.
DEFAULT_HOOK_TIMEOUT = 30.0


@datatype(frozen=True)
class Hook:
    """One command to run at the end: argv exactly as split, never through a shell."""

    argv: tuple[str, ...]
    on_failure_only: bool = False

    @classmethod
    def parse(cls, text: str, *, on_failure_only: bool = False) -> Hook:
        """A hook from one string split as a POSIX shell would split it (quotes, escapes),
        without running a shell: `sh -c '...'` is there for those who want one."""
        import shlex  # only for twrun commands given hooks

        try:
            argv = tuple(shlex.split(text))
        except ValueError as error:
            raise InvalidRequest(f"hook {text!r}: {error}") from None
        if not argv:
            raise InvalidRequest("a hook needs a command")
        return cls(argv, on_failure_only)

    def applies_to(self, ended: Ended) -> bool:
        return not self.on_failure_only or ended.outcome != Status.COMPLETED

    def __str__(self) -> str:
        import shlex

        return shlex.join(self.argv)


def run_hooks(
    hooks: Sequence[Hook],
    ended: Ended,
    *,
    timeout: float,
    grace: float,
    warn: Callable[[str], None],
) -> None:
    """Run, one after the other, the hooks that apply to how the task ended; `warn` is told
    of each that failed, timed out or could not start. A Ctrl-C, SIGTERM or SIGHUP of twrun
    meanwhile stops the hook running and skips the rest (KeyboardInterrupt)."""
    chosen = [hook for hook in hooks if hook.applies_to(ended)]
    if not chosen:
        return
    folder = private_folder("taskwatcher-hook-")
    feedback_json = os.path.join(folder, "feedback.json")
    try:
        with open(feedback_json, "wb") as stream:
            stream.write(jsoncodec.dumps(ended.feedback))
        env = {**_inherited(os.environ), **hook_environment(ended, feedback_json)}
        with _Interrupts() as interrupts:
            for hook in chosen:
                trouble = _run(hook, env, timeout, grace, interrupts)
                if trouble:
                    warn(f"hook {hook}: {trouble}")
    finally:
        import shutil  # only where hooks ran: what a hook left in the folder goes too

        shutil.rmtree(folder, ignore_errors=True)


#: What twrun's own environment may hold for twrun alone: the socket of the systemd unit it
#: runs under, and that unit's watchdog, are not a hook's to speak to; the attempts of a task
#: enclosing twrun are not the hook's task's.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "TASKWATCHER_ATTEMPTS")


def _inherited(environ: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in environ.items() if key not in _NOT_INHERITED}


class _Interrupts:
    """While hooks run, the signals that stop twrun (Ctrl-C, SIGTERM, SIGHUP) raise
    KeyboardInterrupt, so the hook's group, which is not the terminal's, is stopped with
    twrun instead of left behind; while a hook is being started they are held back until its
    pid is known. Signals twrun's starter ignored stay ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.holding = False
        self.pending: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._arrived)
        # twrun ignores a late kill request; an ignored signal would stay ignored in a hook,
        # a handled one is reset by its exec.
        self._previous[KILL_REQUEST_SIGNAL] = signal.signal(KILL_REQUEST_SIGNAL, _late_request)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _arrived(self, signum: int, frame: object) -> None:
        if self.holding:
            self.pending.append(signum)
        else:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise for a signal held back while a hook was being started."""
        if self.pending:
            raise KeyboardInterrupt


def hook_environment(ended: Ended, feedback_json: str) -> dict[str, str]:
    """What a hook learns of the task; the exit code is the one twrun exits with."""
    return {
        "TASKWATCHER_TASKID": str(ended.taskid),
        "TASKWATCHER_NAME": ended.taskname or "",
        "TASKWATCHER_OUTCOME": str(ended.outcome),
        "TASKWATCHER_EXITCODE": str(twrun_exit_code(ended)),
        "TASKWATCHER_DURATION": f"{ended.duration or 0.0:.3f}",
        "TASKWATCHER_LOG": ended.logfile or "",
        "TASKWATCHER_FEEDBACK_JSON": feedback_json,
        "TASKWATCHER_ATTEMPT": str(ended.attempt),  # the last one: hooks run once
    }


def _late_request(signum: int, frame: object) -> None:
    """A kill request after the end: nothing left to stop (the hooks are not the task)."""


def _run(
    hook: Hook, env: dict[str, str], timeout: float, grace: float, interrupts: _Interrupts
) -> str | None:
    """Run one hook in a process group of its own, stdin closed (a hook reading a terminal
    it does not own would stop); what went wrong, in words, or None. Whatever it leaves in
    its group (a background job it forgot) is stopped with it."""
    interrupts.holding = True
    try:
        child, _ = process.spawn(hook.argv, env, stdin=subprocess.DEVNULL)
    except (LaunchError, OSError) as error:
        interrupts.holding = False
        interrupts.check()  # nothing started: nothing to stop
        return str(error) if isinstance(error, LaunchError) else f"cannot start: {error.strerror}"
    leader = None
    try:  # from here a signal, held back or not, stops the hook
        interrupts.holding = False
        leader = process.identity_of(child.pid)
        interrupts.check()
        status = child.wait(timeout)
    except subprocess.TimeoutExpired:
        _stop(leader, child, grace, interrupts)
        return f"still running after {timeout:g} s: stopped"
    except BaseException:
        _stop(leader or process.identity_of(child.pid), child, grace, interrupts)
        raise
    if not process.left_nothing(child.pid):
        _stop(leader, child, grace, interrupts)
    return _failure(status)


def _stop(
    leader: process.ProcessIdentity | None,
    child: subprocess.Popen,
    grace: float,
    interrupts: _Interrupts,
) -> None:
    """Stop the hook's group and reap its leader; a second Ctrl-C meanwhile cannot cut it
    short (it is held back: the stop already answers it)."""
    interrupts.holding = True
    try:
        if leader is not None:
            process.terminate_task(leader, child.pid, grace)
        child.wait()
    finally:
        interrupts.holding = False


def _failure(status: int) -> str | None:
    if status == 0:
        return None
    if status < 0:
        return f"ended by {process.signal_name(-status)}"
    return f"exited with status {status}"


def note_in_log(logfile: str | None, line: str) -> None:
    """Append a line to the task's log, where its story is read later; a log that is gone
    (cleared, never captured) or that became something else (a link) is left alone."""
    if not logfile:
        return
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:  # best effort: the same line is on stderr already
        fd = os.open(logfile, flags)
        with os.fdopen(fd, "ab") as stream:
            if stat.S_ISREG(os.fstat(fd).st_mode):  # never a FIFO or a device put there
                stream.write(f"{line}\n".encode(errors="backslashreplace"))
    except OSError:
        return


def hooks_from_options(on_exit: Iterable[str], on_failure: Iterable[str]) -> list[Hook]:
    """The hooks of twrun's options, in the order each kind was given, on-exit ones first."""
    return [Hook.parse(text) for text in on_exit] + [
        Hook.parse(text, on_failure_only=True) for text in on_failure
    ]
