"""Following a task's log as it grows, through its rotations, until the task ends."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from taskwatcher.engine.housekeeping import HOUSEKEEPING_INTERVAL, Upkeep
from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.logs import (
    BLOCK,
    LogPart,
    NoLog,
    TaskLog,
    Write,
    close_all,
    elsewhere,
    history_record,
    log_of,
)
from taskwatcher.engine.records import Ended
from taskwatcher.engine.store import Store

#: How often `follow` looks whether the log grew or rotated, in seconds.
FOLLOW_POLL = 0.05


class LogFollower:
    """Reads a log as it grows, through its rotations: once the current name holds another
    file, the old one is read to its end, then the rotated file if it is not the old one (it
    rotated twice between two looks), then the new one from its start; each opening is
    checked as any other."""

    def __init__(self, tasklog: TaskLog, notice: Callable[[int], object] | None = None) -> None:
        self.log = tasklog
        self._notice = notice
        self._part: LogPart | None = None
        self._offset = 0

    @property
    def started(self) -> bool:
        """Whether a file of the log was found (a live task's may not exist yet)."""
        return self._part is not None

    def close(self) -> None:
        if self._part is not None:
            os.close(self._part.fd)
            self._part = None

    def pump(self, write: Write) -> None:
        """Write what was added since the last call."""
        if self._part is None:
            parts = self.log.open_parts()
            if len(parts) == 2 and self._notice is not None:
                self._notice(sum(part.size for part in parts))
            self._take(parts, write)
            return
        self._drain(write)
        now = self.log.current_identity()
        if now is None or now == self._part.identity:
            return  # unchanged, or between a rotation's rename and the new file
        self._drain(write)  # the old file is complete once its name holds another
        parts = self.log.open_parts()
        if parts and parts[0].identity == self._part.identity:
            os.close(parts.pop(0).fd)  # the rotated file is the one just read
        self.close()
        self._take(parts, write)

    def _take(self, parts: list[LogPart], write: Write) -> None:
        """Write all but the newest part whole, then follow the newest from its start."""
        try:
            for part in parts[:-1]:
                for chunk in part.chunks():
                    write(chunk)
        finally:
            close_all(parts[:-1])
        if parts:
            self._part, self._offset = parts[-1], 0
            self._drain(write)

    def _drain(self, write: Write) -> None:
        assert self._part is not None
        while data := os.pread(self._part.fd, BLOCK, self._offset):
            self._offset += len(data)
            write(data)


def follow(
    store: Store,
    taskid: int,
    write: Write,
    *,
    notice: Callable[[int], object] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Ended:
    """Write a task's output as it comes until the task ends; returns its history record.

    A reservation is waited for until it starts. The end is noticed through the store's
    change watch, the log looked at every FOLLOW_POLL; housekeeping runs meanwhile
    (`Upkeep`), so a task whose supervisor died ends LOST instead of being followed
    forever. After the end the log is read to its end once more (a supervisor
    finishes the log before it archives the task). `notice` hears the bytes kept when the
    log had already rotated, as following begins.
    """
    upkeep = Upkeep(store, clock)
    task = store.get_task(taskid)
    while task is not None and task.status == Status.RESERVED:
        upkeep.wait(HOUSEKEEPING_INTERVAL)
        task = store.get_task(taskid)
    record = task if task is not None else history_record(store, taskid)
    if (host := elsewhere(store, record)) is not None:
        raise NoLog(
            f"task {taskid} runs on host {host}, where its log is: follow it there"
            f" (twctl log {taskid} shows here the last lines its supervisor pushed)"
        )
    follower = LogFollower(log_of(record), notice)
    try:
        changed = True
        while True:
            follower.pump(write)
            if changed and store.get_task(taskid) is None:
                break
            changed = upkeep.wait(FOLLOW_POLL)
        follower.pump(write)
        if not follower.started:
            raise follower.log.gone()
    finally:
        follower.close()
    return history_record(store, taskid)
