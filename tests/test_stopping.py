"""twrun's exit status read back from a history record, for every outcome."""

from __future__ import annotations

import signal

import pytest

from taskwatcher.engine.lifecycle import FINAL_STATUSES, Status
from taskwatcher.engine.records import Ended
from taskwatcher.engine.stopping import twrun_exit_code

TERM, KILL = 128 + signal.SIGTERM, 128 + signal.SIGKILL

#: (outcome, recorded exit code, termsignal) -> what twrun exits with.
CASES = [
    (Status.COMPLETED, 0, "EXIT", 0),
    (Status.COMPLETED, None, None, 0),
    (Status.FAILED, 3, "EXIT", 3),
    (Status.FAILED, 127, None, 127),  # command not found
    (Status.FAILED, 128 + signal.SIGSEGV, "SIGSEGV", 128 + signal.SIGSEGV),
    (Status.FAILED, None, "SIGSEGV", 128 + signal.SIGSEGV),  # a damaged exit code
    (Status.FAILED, None, "EXIT", 1),
    (Status.TIMEOUT, 124, "SIGTERM", 124),
    (Status.TIMEOUT, None, None, 124),
    (Status.KILLED, TERM, "SIGTERM", TERM),  # twctl kill
    (Status.KILLED, KILL, "SIGKILL", KILL),  # SIGTERM ignored for the whole grace
    (Status.KILLED, 0, "SIGTERM", 0),  # the child trapped the SIGTERM and exited 0
    (Status.KILLED, None, "SIGKILL", KILL),
    (Status.KILLED, 999, "SIGKILL", KILL),  # no process exits with 999: an edited row
    (Status.KILLED, None, "SIGRTMIN+2", 128 + signal.SIGRTMIN + 2),
    (Status.KILLED, None, "SIG99", TERM),  # no such signal
    (Status.KILLED, None, None, TERM),
    (Status.LOST, None, "SIGTERM", 125),
    (Status.LOST, 0, None, 125),
    (Status.EXPIRED, None, None, 125),
    ("?", 0, None, 125),  # what a damaged outcome reads as
]


@pytest.mark.parametrize(("outcome", "exitcode", "termsignal", "expected"), CASES)
def test_twrun_exit_code(
    outcome: str, exitcode: int | None, termsignal: str | None, expected: int
) -> None:
    ended = Ended(id=1, taskid=1, outcome=outcome, exitcode=exitcode, termsignal=termsignal)
    assert twrun_exit_code(ended) == expected


def test_every_outcome_is_covered() -> None:
    assert {case[0] for case in CASES} >= FINAL_STATUSES
