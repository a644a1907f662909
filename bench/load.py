"""Many tasks at once on one database: every end recorded, no lock errors, twctl still answers.

`python -m bench load` reserves TASKS task ids with as many `twctl reserve` at once, starts
as many `twrun` together (most tasks complete, some fail, a few are stopped with
`twctl kill`) while `twctl list --json` runs in a loop, then races RACERS
`twctl reserve --unique` for one name. It prints tasks/s end to end and the `twctl list`
latency under load against the same call on the idle database, measured in the same run.

tests/test_load.py drives the same code on a smaller scale and asserts what this prints.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from bench.measure import seconds, show
from tests.load_helpers import LOCKED, run_load, unique_race

TASKS = 100
KILLED = 4
RACERS = 50
IDLE_SAMPLES = 10


def main() -> None:
    """Print load throughput, `twctl list` latency under load vs idle, and the race result."""
    with tempfile.TemporaryDirectory(prefix="twbench-load-") as folder:
        report = run_load(Path(folder), TASKS, KILLED, IDLE_SAMPLES)
        total = report.reserve_seconds + report.run_seconds
        show(f"{TASKS} twctl reserve at once", seconds(report.reserve_seconds))
        show(f"{TASKS} twrun at once ({KILLED} killed by twctl kill)", seconds(report.run_seconds))
        show("tasks/s end to end (reserve + run + archive)", f"{TASKS / total:.1f}")
        idle = statistics.median(call.seconds for call in report.idle_list)
        busy = [call.seconds for call in report.busy_list]
        show(f"twctl list --json, idle: median of {len(report.idle_list)}", seconds(idle))
        for label, value in (
            ("median", statistics.median(busy)),
            ("worst", max(busy)),
        ):
            show(
                f"twctl list --json under load: {label} of {len(busy)}",
                seconds(value),
                f"{value / idle:.1f}x idle",
            )
        wrong = report.wrong_ends()
        show(
            "tasks in history with the right end",
            f"{TASKS - len(wrong)}/{TASKS}",
            "ok" if not wrong and report.live_left == 0 else f"WRONG: {wrong[:3]}",
        )
        show(f"commands whose stderr says {LOCKED!r}", str(len(report.locked_messages())))
        show("twctl list calls that failed", str(len(report.unanswered_lists())))
        race = unique_race(report.db, RACERS)
        winners = race.winners
        losers = race.losers_naming(winners[0]) if len(winners) == 1 else 0
        show(
            f"{RACERS} twctl reserve --unique at once: winners",
            str(len(winners)),
            f"{losers} exited 1 naming the holder",
        )


if __name__ == "__main__":
    main()
