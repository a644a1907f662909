"""What `twrun` is asked to do, checked before anything is touched."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

from taskwatcher.engine.capture import OutputMode
from taskwatcher.engine.errors import InvalidRequest
from taskwatcher.engine.feedbackfile import FEEDBACK_FLAG
from taskwatcher.engine.output import DEFAULT_LOG_MAX_BYTES
from taskwatcher.engine.retries import NO_RETRIES, RetryPolicy
from taskwatcher.grammar.datatype import datatype

#: Seconds between SIGTERM and SIGKILL when a task is stopped (supervisord's stopwaitsecs idea).
DEFAULT_GRACE = 5.0


class Heartbeat(StrEnum):
    """What counts as a sign of life of a task."""

    FEEDBACK = "feedback"  # a change of its feedback file
    OUTPUT = "output"  # any byte on its stdout or stderr
    NOTIFY = "notify"  # WATCHDOG=1 on its sd_notify socket


#: What counts as a heartbeat unless told otherwise: the feedback file, and sd_notify.
DEFAULT_HEARTBEAT = frozenset({Heartbeat.FEEDBACK, Heartbeat.NOTIFY})


@datatype(frozen=True)
class LaunchRequest:
    """Everything `twrun` was asked to do, before anything is touched."""

    argv: Sequence[str]
    taskid: int | None = None
    name: str | None = None
    unique: bool = False
    info1: str | None = None
    info2: str | None = None
    info3: str | None = None
    feedpath: Path | None = None
    timeout: float | None = None
    max_runtime: float | None = None
    grace: float = DEFAULT_GRACE
    keep_feedback: bool = False
    heartbeat: frozenset[Heartbeat] = DEFAULT_HEARTBEAT
    output: OutputMode = OutputMode.TEE
    logdir: Path | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    retry: RetryPolicy = NO_RETRIES

    def __post_init__(self) -> None:
        if Heartbeat.OUTPUT in self.heartbeat and not self.captures:
            raise InvalidRequest("output cannot be a heartbeat when the output is not captured")
        if self.unique and (self.taskid is not None or not self.name):
            raise InvalidRequest("a unique task needs a name, and no reserved id")
        if self.log_max_bytes < 1:
            raise InvalidRequest("the log size limit must be at least 1 byte")

    @property
    def captures(self) -> bool:
        return self.output != OutputMode.INHERIT

    @property
    def heartbeat_timeout(self) -> float | None:
        """The timeout of the heartbeat: it applies to every task; 0 means none."""
        return self.timeout or None

    @property
    def needs_feedback_file(self) -> bool:
        """Whether the task cannot do without its feedback file: it is the heartbeat its
        timeout waits for, a folder was named for it, or its command says it writes one (the
        spec's `--feedback`). Any other task gets one when it can."""
        feedback_beats = Heartbeat.FEEDBACK in self.heartbeat and self.heartbeat_timeout
        return bool(feedback_beats) or self.feedpath is not None or _mentions_feedback(self.argv)


def _mentions_feedback(argv: Sequence[str]) -> bool:
    """The spec's mark of a program that writes feedback: `--feedback` in its command."""
    return any(arg == FEEDBACK_FLAG or arg.startswith(FEEDBACK_FLAG + "=") for arg in argv)
