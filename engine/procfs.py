"""What the engine reads of a process, straight from /proc/<pid>/stat.

One read gives all a supervisor asks of a process: its parent, group, state and create time.
It costs a single open of a file that is always there, where psutil costs some 10 ms to
import in every supervisor and holds its memory for the life of the task.
"""

from __future__ import annotations

import os

from taskwatcher.grammar.datatype import datatype

#: The kernel counts a process's start in clock ticks since boot.
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@datatype(frozen=True)
class ProcRow:
    """A process as one line of /proc/<pid>/stat describes it."""

    pid: int
    ppid: int
    pgid: int
    #: The state letter: R running, S sleeping, T stopped, Z zombie, ...
    state: str
    #: Ticks since boot when the process started (see `create_time`).
    start_ticks: int

    @property
    def zombie(self) -> bool:
        return self.state == "Z"

    @property
    def create_time(self) -> float:
        """Seconds since the epoch, computed as psutil computes it (start ticks plus the boot
        time), so that create times recorded by earlier versions still match."""
        return self.start_ticks / _TICKS_PER_SECOND + boot_time()


def proc_row(pid: int) -> ProcRow | None:
    """The process that holds pid now, a zombie included; None once it exited (or is hidden).

    PermissionError when /proc is mounted with hidepid and the process is another user's.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name in parentheses may contain anything: split after its last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    # After the name: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice num_threads itrealvalue starttime ...
    return ProcRow(pid, int(fields[1]), int(fields[2]), fields[0].decode(), int(fields[19]))


def visible_row(pid: int) -> ProcRow | None:
    """`proc_row`, with a process that hidepid hides from us counted as none."""
    try:
        return proc_row(pid)
    except PermissionError:
        return None


def process_table() -> list[ProcRow]:
    """Every process that /proc lists and lets us read."""
    rows = (visible_row(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return [row for row in rows if row is not None]


def boot_time() -> float:
    """When the system booted, in seconds since the epoch (the `btime` of /proc/stat).

    Read at every call, as psutil does: a step of the wall clock moves it.
    """
    with open("/proc/stat", "rb") as stat:
        line = next(line for line in stat if line.startswith(b"btime "))
    return float(line.split()[1])
