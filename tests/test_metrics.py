"""`twctl metrics`: the tasks in Prometheus' text format, read back by the Prometheus client's
own parser, from real tasks on real databases (sqlite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fault_helpers import (
    assert_one_line,
    query,
    reserve,
    twctl,
    twctl_json,
    twrun,
    wait_running,
)
from tests.helpers import BIN, run_cli, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    """Every sample the real parser reads, by metric name and label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def finished(db: Path, *argv: str, name: str) -> None:
    result = run_cli("twrun", "--db", db, "--name", name, "--output", "log", "--", *argv)
    assert result.returncode in (0, 1), result.stderr


@pytest.fixture
def running_task(db_path: Path, tmp_path: Path):
    """A live task that has reported 42% progress, under a 600 s timeout (RUNNING for 150 s
    after its one heartbeat, however slow the machine); stopped at the end."""
    gate = tmp_path / "gate"
    taskid = reserve(db_path, "--name", "pull")
    script = (
        f'printf "[progress]42\\n" > "$TASKWATCHER_FEEDBACK"; '
        f"while [ ! -e {gate} ]; do sleep 0.05; done"
    )
    process = twrun(db_path, taskid, "--timeout", "600", command=["sh", "-c", script])
    wait_running(db_path, taskid)
    wait_for(lambda: json.loads(twctl(db_path, "feedback", str(taskid))).get("progress") == "42")
    yield taskid
    gate.touch()
    process.communicate(timeout=30)


def test_live_tasks_and_history_read_back_through_the_real_parser(db_path, running_task):
    reserved = reserve(db_path, "--name", "pull")
    for _ in range(2):
        finished(db_path, "true", name="nightly")
    finished(db_path, "false", name="nightly")
    ends = {row["outcome"]: row["endtime"] for row in twctl_json(db_path, "history")}

    samples = scrape(twctl(db_path, "metrics"))

    live = {labels(name="pull", status=s): n for s, n in [("RESERVED", 1), ("RUNNING", 1)]}
    for status in ("SILENT", "STALLED", "RETRYING"):
        live[labels(name="pull", status=status)] = 0
    assert {k[1]: v for k, v in samples.items() if k[0] == "taskwatcher_live_tasks"} == live
    task = labels(taskid=str(running_task), name="pull", host=os.uname().nodename)
    assert samples["taskwatcher_task_timeout_seconds", task] == 600
    assert samples["taskwatcher_task_progress_ratio", task] == pytest.approx(0.42)
    assert 0 <= samples["taskwatcher_task_heartbeat_age_seconds", task] < 150
    # A reservation has no start, heartbeat or progress yet.
    assert not [key for key in samples if ("taskid", str(reserved)) in key[1]]
    ended = {k[1]: v for k, v in samples.items() if k[0] == "taskwatcher_ended_tasks"}
    assert ended == {
        labels(name="nightly", outcome="COMPLETED"): 2,
        labels(name="nightly", outcome="FAILED"): 1,
    }
    for outcome, endtime in ends.items():
        last = samples["taskwatcher_last_end_time_seconds", labels(name="nightly", outcome=outcome)]
        assert last == pytest.approx(endtime)
    assert samples["taskwatcher_ended_window_seconds", frozenset()] == 86400


def test_the_window_counts_recent_ends_and_the_last_end_is_kept(db_path):
    finished(db_path, "true", name="daily")
    finished(db_path, "true", name="daily")
    query(db_path, "UPDATE history SET endtime = endtime - 7200 WHERE id = 1")
    (newest,) = [row["endtime"] for row in twctl_json(db_path, "history") if row["id"] == 2]

    samples = scrape(twctl(db_path, "metrics", "--window", "1h"))

    done = labels(name="daily", outcome="COMPLETED")
    assert samples["taskwatcher_ended_tasks", done] == 1
    assert samples["taskwatcher_ended_window_seconds", frozenset()] == 3600
    assert samples["taskwatcher_last_end_time_seconds", done] == pytest.approx(newest)
    query(db_path, "UPDATE history SET endtime = endtime - 7200 WHERE id = 2")
    later = scrape(twctl(db_path, "metrics", "--window", "1h"))
    assert later["taskwatcher_ended_tasks", done] == 0  # the series stays, at zero
    assert later["taskwatcher_last_end_time_seconds", done] == pytest.approx(newest - 7200)


@pytest.mark.parametrize(
    "name",
    [
        'say "hi"',
        "back\\slash",
        "two\nlines",
        "ünïcödé",
        b"caf\xe9".decode(errors="surrogateescape"),
    ],
)
def test_any_task_name_is_a_label_the_parser_reads_back(db_path, name):
    result = run_cli("twctl", "--db", db_path, "reserve", "--name", name)
    assert result.returncode == 0, result.stderr
    samples = scrape(twctl(db_path, "metrics"))
    names = {dict(key[1])["name"] for key in samples if key[0] == "taskwatcher_live_tasks"}
    assert names == {task["name"] for task in twctl_json(db_path, "list")}
    assert len(names) == 1


def test_an_empty_database_is_valid_output(empty_db):
    samples = scrape(twctl(empty_db, "metrics"))
    assert samples == {("taskwatcher_ended_window_seconds", frozenset()): 86400}


def test_the_textfile_is_replaced_whole_and_readable_by_others(db_path, tmp_path):
    reserve(db_path, "--name", "job")
    target = tmp_path / "out" / "taskwatcher.prom"
    target.parent.mkdir()
    target.write_text("stale\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep\n")
    link = tmp_path / "out" / "linked.prom"
    link.symlink_to(elsewhere)

    assert twctl(db_path, "metrics", "--textfile", target) == ""
    assert twctl(db_path, "metrics", "--textfile", link) == ""

    assert scrape(target.read_text()) == scrape(twctl(db_path, "metrics"))
    assert sorted(p.name for p in target.parent.iterdir()) == ["linked.prom", "taskwatcher.prom"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    assert not link.is_symlink() and elsewhere.read_text() == "keep\n"


def test_an_unwritable_textfile_is_one_line_and_leaves_the_old_file(empty_db, tmp_path):
    db_path = empty_db
    folder = tmp_path / "ro"
    folder.mkdir()
    target = folder / "taskwatcher.prom"
    target.write_text("old\n")
    missing = tmp_path / "missing" / "x.prom"
    result = run_cli("twctl", "--db", db_path, "metrics", "--textfile", missing)
    assert result.returncode == 1
    assert "cannot write" in assert_one_line(result.stderr, "twctl: ")
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder stops only others
        folder.chmod(0o500)
        result = run_cli("twctl", "--db", db_path, "metrics", "--textfile", target)
        assert result.returncode == 1
        assert_one_line(result.stderr, "twctl: ")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in folder.iterdir()) == ["taskwatcher.prom"]


@pytest.mark.parametrize("window", ["0", "-1h", "soon", "1y", "nan"])
def test_a_bad_window_is_a_usage_error(db_path, window):  # refused before any database
    result = run_cli("twctl", "--db", db_path, "metrics", "--window", window)
    assert result.returncode == 2
    assert "--window" in result.stderr and "Traceback" not in result.stderr


def test_metrics_on_postgresql_read_as_on_sqlite(pg_url):
    for argv in (["true"], ["false"]):
        result = run_cli("twrun", "--db", pg_url, "--name", "lab", "--output", "log", "--", *argv)
        assert result.returncode in (0, 1), result.stderr
    reserve_result = run_cli("twctl", "--db", pg_url, "reserve", "--name", "lab")
    assert reserve_result.returncode == 0, reserve_result.stderr

    samples = scrape(twctl(pg_url, "metrics"))

    assert samples["taskwatcher_live_tasks", labels(name="lab", status="RESERVED")] == 1
    for outcome in ("COMPLETED", "FAILED"):
        assert samples["taskwatcher_ended_tasks", labels(name="lab", outcome=outcome)] == 1


def _umask() -> int:
    """This process's umask, which the children inherit (read by a child: setting it here
    would change it for the other tests' threads)."""
    code = "import os; print(os.umask(0))"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def test_no_name_and_the_empty_name_are_one_series(db_path):
    for argv in (["reserve"], ["reserve", "--name", ""]):
        twctl(db_path, *argv)
    for taskid in ("1", "2"):
        twctl(db_path, "kill", taskid)
    samples = scrape(twctl(db_path, "metrics"))
    assert samples["taskwatcher_ended_tasks", labels(name="", outcome="EXPIRED")] == 2


@pytest.mark.parametrize("path", ["", ".", "/", "..", "out/.."])
def test_a_textfile_that_cannot_name_a_file_is_a_usage_error(db_path, path):  # likewise
    result = run_cli("twctl", "--db", db_path, "metrics", "--textfile", path)
    assert result.returncode == 2
    assert "--textfile" in result.stderr and "Traceback" not in result.stderr


def test_the_output_is_utf8_whatever_the_locale(db_path):
    reserve(db_path, "--name", "日本")
    env = {**os.environ, "PYTHONIOENCODING": "latin-1", "LC_ALL": "C"}
    result = subprocess.run(
        [str(BIN / "twctl"), "--db", str(db_path), "metrics"], capture_output=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert ("taskwatcher_live_tasks", labels(name="日本", status="RESERVED")) in scrape(
        result.stdout.decode()
    )


def test_a_database_that_is_not_there_is_an_error_and_no_textfile(tmp_path):
    target = tmp_path / "taskwatcher.prom"
    target.write_text("old\n")
    result = run_cli("twctl", "--db", tmp_path / "typo.db", "metrics", "--textfile", target)
    assert result.returncode == 2
    assert "no taskwatcher database" in assert_one_line(result.stderr, "twctl: ")
    assert target.read_text() == "old\n" and not (tmp_path / "typo.db").exists()
