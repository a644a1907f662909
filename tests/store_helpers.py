"""Helpers for tests that drive the store directly: launches, claims and ends of tasks.

A supervisor claims a reservation with a `Launch` naming its token's digest, then writes
its row only with that digest; these helpers do the same, with this test process standing
in for the supervisor unless a test says otherwise.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import psutil

from taskwatcher.engine.lifecycle import Status
from taskwatcher.engine.ownership import token_digest
from taskwatcher.engine.records import Ended, Ending, Launch
from taskwatcher.engine.store import Store

#: The token of every task a test starts with these helpers, and what the row keeps of it.
TOKEN = "0123456789abcdef0123456789abcdef"
TOKEN_HASH = token_digest(TOKEN)


def a_launch(**fields: Any) -> Launch:
    """A launch by this test process as the supervisor, on this host; `fields` override."""
    values: dict[str, Any] = {
        "supervisor_pid": os.getpid(),
        "supervisor_ctime": psutil.Process().create_time(),
        "host": socket.gethostname(),
        "token_hash": TOKEN_HASH,
        "uid": os.getuid(),
    }
    return Launch(**{**values, **fields})


def claim(
    store: Store,
    taskid: int,
    *,
    pid: int | None = None,
    child_ctime: float | None = None,
    **launch_fields: Any,
) -> str:
    """Claim a reservation as a supervisor does (RESERVED -> RUNNING), recording the child
    when `pid` is given; returns the token digest its writes need."""
    launch = a_launch(**launch_fields)
    store.claim(taskid, launch)
    if pid is not None:
        store.set_child(taskid, launch.token_hash, pid, child_ctime)
    return launch.token_hash


def started(store: Store, name: str | None = "job", **claim_fields: Any) -> int:
    """A new reservation, claimed at once; returns its id."""
    taskid = store.reserve(name)
    claim(store, taskid, **claim_fields)
    return taskid


def finish(
    store: Store,
    taskid: int,
    outcome: Status | str,
    *,
    token_hash: str | None = None,
    **ending_fields: Any,
) -> Ended:
    """Archive a task with the given outcome (as housekeeping does, or its supervisor with
    `token_hash`); returns its history record."""
    ending = Ending(outcome, **ending_fields)  # type: ignore[arg-type]  # the store checks it
    return store.archive(taskid, ending, token_hash=token_hash)
