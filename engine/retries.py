"""When a failed attempt of a task is launched again, and how long after.

A task that fails may be launched again by the same supervisor, under the same id, up to
`retries` more times. Only ends the task itself caused are retried: a kill someone asked for
(`twctl kill`, a signal to twrun) ends the series, and so do a lost lease and a command that
twrun could not execute at all (not found, not executable: the next attempt would meet the
same).
"""

from __future__ import annotations

from taskwatcher.engine.errors import InvalidRequest
from taskwatcher.engine.lifecycle import Status
from taskwatcher.grammar.datatype import datatype

#: The outcomes `--retry-on` may name; KILLED means by a signal nobody here sent.
RETRYABLE = (Status.FAILED, Status.TIMEOUT, Status.KILLED)
DEFAULT_RETRY_ON = frozenset({Status.FAILED, Status.TIMEOUT})
DEFAULT_RETRY_DELAY = 1.0
#: The longest wait between two attempts, whatever the backoff makes of the delay.
MAX_RETRY_DELAY = 24 * 3600.0
MAX_BACKOFF = 100.0


@datatype(frozen=True)
class RetryPolicy:
    """How many more times a failed task is launched, after which ends, with what delays."""

    retries: int = 0
    delay: float = DEFAULT_RETRY_DELAY
    backoff: float = 1.0  # each delay is the one before it times this
    on: frozenset[Status] = DEFAULT_RETRY_ON

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise InvalidRequest("retries cannot be negative")
        if not 0 <= self.delay <= MAX_RETRY_DELAY:
            raise InvalidRequest(f"the retry delay must be 0 to {MAX_RETRY_DELAY:g} s")
        if not 1 <= self.backoff <= MAX_BACKOFF:
            raise InvalidRequest(f"the retry backoff must be from 1 to {MAX_BACKOFF:g}")
        if not self.on <= set(RETRYABLE):
            raise InvalidRequest(
                f"only {', '.join(status.lower() for status in RETRYABLE)} ends can be retried"
            )

    @property
    def attempts(self) -> int:
        """How many times the task may be launched in all."""
        return 1 + self.retries

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before launching `attempt` (2 for the first retry)."""
        try:
            grown = self.delay * self.backoff ** max(0, attempt - 2)
        except OverflowError:  # a backoff of 100 past the 150th attempt, say
            return MAX_RETRY_DELAY
        return min(grown, MAX_RETRY_DELAY)

    def retries_end(self, outcome: Status, stopped_for: Status | None, attempt: int) -> bool:
        """Whether an attempt that ended with `outcome` is followed by another. `stopped_for`
        is the outcome the supervisor stopped it for, if it did: only its own heartbeat or
        runtime rule (TIMEOUT) leaves the decision to the policy."""
        if attempt >= self.attempts or outcome not in self.on:
            return False
        return stopped_for is None or stopped_for == Status.TIMEOUT


#: A task launched once, as without `--retries`.
NO_RETRIES = RetryPolicy()
