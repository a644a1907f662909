"""Signals as readable events: the supervisor sleeps in poll() and wakes on any of them."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

#: Signals that ask the supervisor to stop its task; SIGUSR1 means "read your kill request".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
KILL_REQUEST_SIGNAL = signal.SIGUSR1


def watched_stop_signals() -> tuple[signal.Signals, ...]:
    """The stop signals twrun acts on: one its starter ignored (`nohup`) stays ignored.

    timeout(1) and nohup users expect `nohup twrun ... &` to survive the terminal's hangup;
    the ignored disposition is also what the task inherits through exec.
    """
    return tuple(signum for signum in STOP_SIGNALS if signal.getsignal(signum) != signal.SIG_IGN)


class SignalInbox:
    """A pipe that receives the number of every watched signal (via `signal.set_wakeup_fd`).

    Handlers do nothing themselves, so no work runs inside a signal handler and no signal
    is lost between two polls: the loop reads the numbers when poll() says the pipe is ready.
    """

    def __init__(self, signals: Iterable[signal.Signals]) -> None:
        self._signals = tuple(signals)
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_handlers: dict[signal.Signals, object] = {}
        self._previous_wakeup_fd = -1

    @property
    def fileno(self) -> int:
        """The descriptor to poll for readability."""
        return self._read_fd

    def __enter__(self) -> SignalInbox:
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in self._signals:
            self._previous_handlers[signum] = signal.signal(signum, _note_only)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def drain(self) -> list[signal.Signals]:
        """The signals received since the last call, oldest first."""
        received: list[signal.Signals] = []
        while True:
            try:
                chunk = os.read(self._read_fd, 512)
            except BlockingIOError:
                return received
            if not chunk:
                return received
            received.extend(signal.Signals(number) for number in chunk)


def _note_only(signum: int, frame: object) -> None:
    """Handler that leaves the work to the loop reading the wakeup pipe."""
