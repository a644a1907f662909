"""The package's process API: identities that survive PID reuse, a task's processes and
stopping them, launching, child watching and exit-status mapping, each from its own module."""

from __future__ import annotations

from taskwatcher.engine.childwatch import ChildWatch
from taskwatcher.engine.errors import LaunchError
from taskwatcher.engine.exitstatus import ChildExit, exit_status_to_code, signal_name
from taskwatcher.engine.identity import (
    ProcessIdentity,
    identity_of,
    is_same_process,
    signal_identity,
)
from taskwatcher.engine.launch import PARENT_DEATH_SIGNAL, become_subreaper, spawn
from taskwatcher.engine.tasktree import (
    CALM_LOOKS,
    MAX_POLL_INTERVAL,
    StopResult,
    left_nothing,
    reap_adopted,
    remnants,
    terminate_task,
)

__all__ = [
    "CALM_LOOKS",
    "MAX_POLL_INTERVAL",
    "PARENT_DEATH_SIGNAL",
    "ChildExit",
    "ChildWatch",
    "LaunchError",
    "ProcessIdentity",
    "StopResult",
    "become_subreaper",
    "exit_status_to_code",
    "identity_of",
    "is_same_process",
    "left_nothing",
    "reap_adopted",
    "remnants",
    "signal_identity",
    "signal_name",
    "spawn",
    "terminate_task",
]
