"""How a child's end reads: twrun's exit code and history's termsignal/termerror, from a returncode.

Pure functions of `Popen.returncode`, so the mapping is the same wherever a task ends and is
unit-tested without processes.
"""

from __future__ import annotations

import signal
from collections import namedtuple

#: termsignal of a child that ended by calling exit() rather than by a signal.
NORMAL_EXIT = "EXIT"
#: Shells and timeout(1) report a child killed by signal N as 128 + N.
SIGNAL_EXIT_BASE = 128


class ChildExit(namedtuple("ChildExit", "exit_code termsignal termerror")):
    """A child's end in twrun's terms: exit_code (int), termsignal and termerror (str); a
    plain tuple, so it also unpacks as three values (collections' namedtuple: typing's would
    cost every command the import of typing)."""

    __slots__ = ()


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15; real-time signals as `kill -l` spells them, never a ValueError."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        if signal.SIGRTMIN < signum < signal.SIGRTMAX:
            return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
        return f"SIG{signum}"


def exit_status_to_code(returncode: int) -> ChildExit:
    """Map `Popen.returncode` (negative for a signal) to the timeout(1) convention and words."""
    if returncode >= 0:
        return ChildExit(returncode, NORMAL_EXIT, f"exit status {returncode}")
    name = signal_name(-returncode)
    return ChildExit(SIGNAL_EXIT_BASE - returncode, name, f"killed by {name}")
