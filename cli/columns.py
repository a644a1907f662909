"""The columns of `twctl list` and `twctl history` tables, and the order in which they give
way on a narrow terminal (README, twctl: Output)."""

from __future__ import annotations

from collections.abc import Sequence

from taskwatcher.cli.fit import FREE, Fit
from taskwatcher.cli.render import Column, seconds_column, time_column, yes_no
from taskwatcher.grammar.datatype import replace


def _dropping(columns: Sequence[Column], order: Sequence[str]) -> list[Column]:
    """The columns, those named in `order` ranked to drop out first to last on a narrow
    terminal; the others are always shown."""
    return [
        replace(column, fit=Fit(column.fit.free, order.index(column.header) + 1))
        if column.header in order
        else column
        for column in columns
    ]


def attempt_of(task: dict) -> str | None:
    """`2/4` for the second attempt of a task launched up to 4 times; None (shown `-`) for
    a task launched once."""
    if task["attempts"] <= 1:
        return None
    return f"{task['attempt']}/{task['attempts']}"


#: The columns that drop out of `list` on a narrow terminal, first to last; taskid, name and
#: status always stay.
LIST_DROP_ORDER = (
    "info3", "info2", "info1", "attempt", "timeout", "feedback",
    "starttime", "timer", "said", "pid", "duration",
)  # fmt: skip
#: The same for `history`; taskid, name and outcome always stay.
HISTORY_DROP_ORDER = (
    "info3", "info2", "info1", "attempt", "signal", "starttime",
    "error", "exit", "duration", "endtime",
)  # fmt: skip

LIST_COLUMNS = _dropping(
    [
        Column("taskid", "taskid"),
        Column("name", "name", fit=FREE),
        Column("info1", "info1", fit=FREE),
        Column("info2", "info2", fit=FREE),
        Column("info3", "info3", fit=FREE),
        Column("pid", "pid"),
        Column("status", "status"),
        Column("attempt", "attempt_of"),
        time_column("starttime", "starttime"),
        seconds_column("duration", "duration"),
        Column("feedback", "feedback", yes_no, yes_no),
        seconds_column("timer", "timer"),
        seconds_column("timeout", "timeout"),
        Column("said", "said", fit=FREE),
    ],
    LIST_DROP_ORDER,
)

HISTORY_COLUMNS = _dropping(
    [
        Column("taskid", "taskid"),
        Column("name", "taskname", fit=FREE),
        Column("info1", "info1", fit=FREE),
        Column("info2", "info2", fit=FREE),
        Column("info3", "info3", fit=FREE),
        Column("outcome", "outcome"),
        Column("exit", "exitcode"),
        Column("signal", "termsignal"),
        Column("error", "termerror", fit=FREE),
        time_column("starttime", "starttime"),
        time_column("endtime", "endtime"),
        seconds_column("duration", "duration"),
        Column("attempt", "attempt"),
    ],
    HISTORY_DROP_ORDER,
)
