"""Commands run once a task is archived (`twrun --on-exit`, `--on-failure`).

A hook is told how the task ended through its environment; it runs after the record is
written, so nothing it does (hang, fail, crash) can change what history says or what twrun
exits with. The final feedback goes in a file, not a variable: one could exceed the 128 KiB
Linux allows a single environment string.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from taskwatcher.engine import process
from taskwatcher.engine.errors import InvalidRequest, LaunchError
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.notify import private_folder
from taskwatcher.engine.records import Ended
from taskwatcher.engine.stopping import twrun_exit_code

#: Seconds a hook may run before it is stopped, unless `--hook-timeout` says otherwise.
DEFAULT_HOOK_TIMEOUT = 30.0


@dataclass(frozen=True)
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
    of each that failed, timed out or could not start."""
    chosen = [hook for hook in hooks if hook.applies_to(ended)]
    if not chosen:
        return
    folder = private_folder("taskwatcher-hook-")
    feedback_json = os.path.join(folder, "feedback.json")
    try:
        with open(feedback_json, "wb") as stream:
            stream.write(orjson.dumps(ended.feedback))
        env = {**os.environ, **hook_environment(ended, feedback_json)}
        for hook in chosen:
            trouble = _run(hook, env, timeout, grace)
            if trouble:
                warn(f"hook {hook}: {trouble}")
    finally:  # the folder is ours alone (0700): only our file can be in it
        with contextlib.suppress(FileNotFoundError):
            os.remove(feedback_json)
        os.rmdir(folder)


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
    }


def _run(hook: Hook, env: dict[str, str], timeout: float, grace: float) -> str | None:
    """Run one hook in a process group of its own; what went wrong, in words, or None.

    Whatever it leaves in its group (a background job it forgot) is stopped with it, and so
    is the hook on a Ctrl-C of twrun (the terminal's Ctrl-C does not reach its group).
    """
    started, interrupted = _start(hook, env)
    if isinstance(started, str):
        if interrupted:
            raise KeyboardInterrupt
        return started
    child, leader = started, None
    try:
        leader = process.identity_of(child.pid)
        if interrupted:
            raise KeyboardInterrupt
        status = child.wait(timeout)
    except subprocess.TimeoutExpired:
        _stop(leader, child.pid, grace)
        child.wait()
        return f"still running after {timeout:g} s: stopped"
    except BaseException:
        _stop(leader or process.identity_of(child.pid), child.pid, grace)
        child.wait()
        raise
    if not process.left_nothing(child.pid):
        _stop(leader, child.pid, grace)
    return _failure(status)


def _start(hook: Hook, env: dict[str, str]) -> tuple[subprocess.Popen | str, list[int]]:
    """The hook's process, or why it could not start; and whether a Ctrl-C came meanwhile,
    held back until then: raised inside spawn, it would leave a hook nobody knows the pid of.
    (The list, not a flag, is returned: a Ctrl-C just before the handler goes back counts.)"""
    caught: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        return process.spawn(hook.argv, env)[0], caught
    except LaunchError as error:
        return str(error), caught
    except OSError as error:
        return f"cannot start: {error.strerror or error}", caught
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(leader: process.ProcessIdentity | None, pgid: int, grace: float) -> None:
    if leader is not None:
        process.terminate_task(leader, pgid, grace)


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
    try:
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    with os.fdopen(fd, "ab") as stream:
        stream.write(f"{line}\n".encode(errors="backslashreplace"))


def hooks_from_options(on_exit: Iterable[str], on_failure: Iterable[str]) -> list[Hook]:
    """The hooks of twrun's options, in the order each kind was given, on-exit ones first."""
    return [Hook.parse(text) for text in on_exit] + [
        Hook.parse(text, on_failure_only=True) for text in on_failure
    ]
