"""The columns of `twctl list` and `twctl history` tables."""

from __future__ import annotations

from taskwatcher.cli.render import Column, seconds_column, time_column, yes_no

LIST_COLUMNS = [
    Column("taskid", "taskid"),
    Column("name", "name"),
    Column("info1", "info1"),
    Column("info2", "info2"),
    Column("info3", "info3"),
    Column("pid", "pid"),
    Column("status", "status"),
    time_column("starttime", "starttime"),
    seconds_column("duration", "duration"),
    Column("feedback", "feedback", yes_no, yes_no),
    seconds_column("timer", "timer"),
    seconds_column("timeout", "timeout"),
    Column("said", "said"),
]

HISTORY_COLUMNS = [
    Column("taskid", "taskid"),
    Column("name", "taskname"),
    Column("info1", "info1"),
    Column("info2", "info2"),
    Column("info3", "info3"),
    Column("outcome", "outcome"),
    Column("exit", "exitcode"),
    Column("signal", "termsignal"),
    Column("error", "termerror"),
    time_column("starttime", "starttime"),
    time_column("endtime", "endtime"),
    seconds_column("duration", "duration"),
]
