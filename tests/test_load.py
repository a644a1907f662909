"""Many real twrun and twctl processes on one database at once (the bench's driver, scaled down).

The bench runs the same driver with 100 tasks and prints the speed; here only what must hold
under any load is asserted: every end recorded right, no lock error, twctl still answering.
"""

from __future__ import annotations

from pathlib import Path

from tests.load_helpers import Mode, run_load, unique_race

TASKS = 20
KILLED = 2
RACERS = 20


def test_tasks_started_together_all_end_right_while_twctl_list_answers(tmp_path: Path) -> None:
    # One test, not several sharing a fixture: under `pytest -n` each worker would rerun it.
    load = run_load(tmp_path, TASKS, KILLED)
    assert {job.mode for job in load.jobs} == set(Mode)
    assert len({job.taskid for job in load.jobs}) == TASKS

    # Every task in history with its outcome, exit status and final feedback; none left live.
    assert load.wrong_ends() == []
    assert sorted(load.history) == sorted(job.taskid for job in load.jobs)
    assert load.live_left == 0

    killed = [job for job in load.jobs if job.mode is Mode.KILL]
    assert [(kill.returncode, kill.stdout) for kill in load.kills] == [
        (0, f"task {job.taskid} ({job.name}): KILLED\n") for job in killed
    ]

    # No lock error anywhere, and nothing else on any stderr either.
    assert load.locked_messages() == []
    assert [text for text in load.stderr_texts() if text] == []

    assert load.busy_list, "the lister made no call during the load"
    assert load.unanswered_lists() == []
    assert load.foreign_listings() == []


def test_one_of_many_simultaneous_unique_reservations_wins(tmp_path: Path) -> None:
    race = unique_race(tmp_path / "race.db", RACERS)
    assert len(race.winners) == 1, race.results
    assert race.losers_naming(race.winners[0]) == RACERS - 1, race.results
