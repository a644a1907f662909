"""Why a task was stopped, and how its end reads in history and in twrun's exit status."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.process import exit_status_to_code
from taskwatcher.engine.records import Ending

#: timeout(1)'s exit status when the time ran out.
TIMEOUT_EXIT_CODE = 124
#: timeout(1)'s exit status when the supervisor itself failed.
SUPERVISOR_FAILED = 125


@dataclass(frozen=True)
class TaskEnd:
    """How a task ended: what history records and what twrun exits with."""

    taskid: int
    outcome: Status
    exit_code: int
    termsignal: str | None
    termerror: str | None
    endtime: float | None = None  # when the task's process ended; None: when it is archived

    def ending(self, feedback: dict[str, str] | None) -> Ending:
        """How history keeps it (the exit code twrun exits with aside)."""
        return Ending(
            self.outcome, self.termsignal, self.termerror, self.exit_code, self.endtime, feedback
        )


@dataclass(frozen=True)
class StopReason:
    """A decision to stop a running task: what outcome it leads to and why, in words."""

    outcome: Status
    reason: str
    first_signal: signal.Signals = signal.SIGTERM

    @classmethod
    def timeout(cls, seconds: float) -> StopReason:
        """The heartbeat age reached the timeout; the reason is what history records."""
        return cls(Status.TIMEOUT, f"no heartbeat for {seconds:g} s")

    @classmethod
    def by_signal(cls, signum: signal.Signals) -> StopReason:
        """twrun itself received SIGINT, SIGTERM or SIGHUP: pass the same signal on."""
        return cls(Status.KILLED, f"twrun received {signum.name}", first_signal=signum)

    @classmethod
    def requested(cls, requester: str) -> StopReason:
        """Someone asked through the database (`twctl kill`)."""
        return cls(Status.KILLED, f"killed on request by {requester}")


def end_of_task(
    taskid: int,
    stop: StopReason | None,
    returncode: int,
    last_signal: str | None,
) -> TaskEnd:
    """Combine the stop decision (if any) with the child's status into history's terms."""
    exit_code, termsignal, termerror = exit_status_to_code(returncode)
    if stop is None:
        if returncode == 0:
            return TaskEnd(taskid, Status.COMPLETED, 0, termsignal, None)
        outcome = Status.FAILED if returncode > 0 else Status.KILLED
        return TaskEnd(taskid, outcome, exit_code, termsignal, termerror)
    if stop.outcome == Status.TIMEOUT:
        exit_code = TIMEOUT_EXIT_CODE
    return TaskEnd(taskid, stop.outcome, exit_code, last_signal or termsignal, stop.reason)
