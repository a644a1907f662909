"""Why a task was stopped, and how its end reads in history and in twrun's exit status."""

from __future__ import annotations

import re
import signal

from taskwatcher.engine.exitstatus import SIGNAL_EXIT_BASE, exit_status_to_code
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.records import Ended, Ending
from taskwatcher.grammar.datatype import datatype

#: timeout(1)'s exit status when the time ran out.
TIMEOUT_EXIT_CODE = 124
#: timeout(1)'s exit status when the supervisor itself failed.
SUPERVISOR_FAILED = 125
#: The largest status a process can exit with.
MAX_EXIT_CODE = 255


@datatype(frozen=True)
class TaskEnd:
    """How a task ended: what history records and what twrun exits with."""

    taskid: int
    outcome: Status
    exit_code: int
    termsignal: str | None
    termerror: str | None
    endtime: float | None = None  # when the task's process ended; None: when it is archived

    def ending(self, feedback: dict[str, str] | None, output_tail: str | None = None) -> Ending:
        """How history keeps it (the exit code twrun exits with aside)."""
        return Ending(
            self.outcome,
            self.termsignal,
            self.termerror,
            self.exit_code,
            self.endtime,
            feedback,
            output_tail,
        )


@datatype(frozen=True)
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
    def max_runtime(cls, seconds: float) -> StopReason:
        """The task ran for its whole maximum runtime, heartbeats or not."""
        return cls(Status.TIMEOUT, f"still running after its maximum runtime of {seconds:g} s")

    @classmethod
    def watchdog(cls) -> StopReason:
        """The task itself asked to be treated as hung (sd_notify `WATCHDOG=trigger`)."""
        return cls(Status.TIMEOUT, "watchdog triggered by the task")

    @classmethod
    def by_signal(cls, signum: signal.Signals) -> StopReason:
        """twrun itself received SIGINT, SIGTERM or SIGHUP: pass the same signal on."""
        return cls(Status.KILLED, f"twrun received {signum.name}", first_signal=signum)

    @classmethod
    def lease_lost(cls, seconds: float) -> StopReason:
        """The supervisor could not renew its lease on the row for its whole length (the
        database unreachable, or the supervisor paused): other hosts count the task LOST."""
        return cls(Status.LOST, f"supervisor could not renew its lease for {seconds:g} s")

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


def twrun_exit_code(ended: Ended) -> int:
    """The status twrun exited with (or, for an end it did not record, would have), from the
    history record, so that a command waiting for a task can exit as if it had run it.

    COMPLETED is 0, TIMEOUT 124; LOST and EXPIRED are 125 (no twrun saw the end). FAILED and
    KILLED keep the recorded code, which is twrun's own (the child's status, 128+N for a
    signal, 126 or 127 for a command that could not start; a child that traps the SIGTERM of
    a kill and exits 0 made twrun exit 0). A record without a usable one (damaged, edited)
    falls back on its signal: 128+N, else 1 for FAILED and 128+SIGTERM for KILLED.
    """
    if ended.outcome == Status.COMPLETED:
        return 0
    if ended.outcome == Status.TIMEOUT:
        return TIMEOUT_EXIT_CODE
    if ended.outcome not in (Status.FAILED, Status.KILLED):
        return SUPERVISOR_FAILED  # LOST, EXPIRED, or an outcome only a damaged row holds
    if ended.exitcode is not None and 0 <= ended.exitcode <= MAX_EXIT_CODE:
        return ended.exitcode
    signum = _signal_number(ended.termsignal)
    if signum is not None:
        return SIGNAL_EXIT_BASE + signum
    return 1 if ended.outcome == Status.FAILED else SIGNAL_EXIT_BASE + signal.SIGTERM


#: A signal history names by number, as `exitstatus.signal_name` spells those without a name.
_NUMBERED_SIGNAL = re.compile(r"SIG(RTMIN\+)?([0-9]+)")


def _signal_number(name: str | None) -> int | None:
    """The number of a signal as history names it (`SIGTERM`, `SIGRTMIN+3`, `SIG99`), else None
    (`EXIT`, nothing, or text no signal is called)."""
    if name is None:
        return None
    if name in signal.Signals.__members__:
        return signal.Signals[name].value
    numbered = _NUMBERED_SIGNAL.fullmatch(name)
    if numbered is None:
        return None
    signum = int(numbered[2]) + (signal.SIGRTMIN if numbered[1] else 0)
    return signum if 0 < signum < signal.NSIG else None
