"""twctl's response time as a user sees it: interpreter start-up, imports, housekeeping, work.

On a well-used database (200 live tasks, 100,000 history rows), `twctl list --json` and
`twctl feedback ID` of a task with a 1M-line feedback file, against a bare interpreter and
interpreters that only import the store or twctl, measured in the same run; then where the
time goes: in-process costs and `python -X importtime` profiles naming the heaviest imports.

Targets: `list` under 150 ms wall, interpreter start included; `feedback` under 150 ms; the
supervisor's look after a one-line append independent of the file's size (1M lines against
1k lines)."""

from __future__ import annotations

import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.measure import fill_history, median_of, seconds, show, target, wall_times, write_feedback
from taskwatcher.cli.columns import LIST_COLUMNS
from taskwatcher.cli.render import print_records
from taskwatcher.engine import control, housekeeping
from taskwatcher.engine.feedbackfile import LOOP_READ_BUDGET, FeedbackFile
from taskwatcher.engine.ownership import new_token, token_digest
from taskwatcher.engine.process import identity_of
from taskwatcher.engine.records import Launch
from taskwatcher.engine.store import Store, open_store

TWCTL = str(Path(sys.executable).parent / "twctl")
LIVE_TASKS = 200
HISTORY_ROWS = 100_000
NAMES = 100
RUNS = 15
FEEDBACK_RUNS = 9
PROFILE_RUNS = 5
BIG_LINES = 1_000_000
SMALL_LINES = 1_000
#: Third-party and standard-library packages whose import cost is worth naming.
SHOWN_IMPORTS = 8
SHOWN_FIRST_PARTY = 5


def start_live_task(store: Store, name: str, feedback: Path | None = None) -> tuple[int, str]:
    """A started task whose supervisor is this process, so housekeeping finds it alive; its
    id and the token hash its supervisor writes with.

    No child is recorded (pid, child_ctime and pgid stay empty) and no process carries its
    token: were the task ever judged lost, housekeeping then has nothing to signal, and this
    process cannot be stopped by its own benchmark.
    """
    me = identity_of(os.getpid())
    assert me is not None
    taskid = store.reserve(name, info1="bench")
    token_hash = token_digest(new_token())
    launch = Launch(
        supervisor_pid=me.pid,
        supervisor_ctime=me.create_time,
        host=socket.gethostname(),
        token_hash=token_hash,
        uid=os.getuid(),
        command=["sleep", "3600"],
        timeout=30,
        feedpath=None if feedback is None else str(feedback),
    )
    store.claim(taskid, launch)
    return taskid, token_hash


def twctl(db: Path, *args: str) -> list[str]:
    return [TWCTL, "--db", str(db), *args]


def run_json(command: list[str]) -> object:
    return orjson.loads(subprocess.run(command, capture_output=True, check=True).stdout)


def list_figures(db: Path) -> float:
    """`twctl list --json` against bare and importing interpreters; returns python's start-up."""
    listed = run_json(twctl(db, "list", "--json"))
    running = sum(task["status"] == "RUNNING" for task in listed)
    if running != LIVE_TASKS:
        raise RuntimeError(f"expected {LIVE_TASKS} RUNNING tasks, twctl listed {running}")
    runs = wall_times(
        {
            "python": [sys.executable, "-c", "pass"],
            "store": [sys.executable, "-c", "import taskwatcher.engine.store"],
            "cli": [sys.executable, "-c", "import taskwatcher.cli.twctl"],
            "list": twctl(db, "list", "--json"),
        },
        RUNS,
    )
    if len(run_json(twctl(db, "list", "--json"))) != LIVE_TASKS:
        raise RuntimeError("live tasks changed while list was timed")
    python, store, cli, listing = (statistics.median(runs[key]) for key in runs)
    show(f"python -c pass (baseline, median of {RUNS})", seconds(python), "1.00x")
    show("python -c 'import taskwatcher.engine.store'", seconds(store), f"{store / python:.1f}x")
    show("python -c 'import taskwatcher.cli.twctl'", seconds(cli), f"{cli / python:.1f}x")
    show(
        f"twctl list --json, {LIVE_TASKS} live, {HISTORY_ROWS:,} history rows",
        seconds(listing),
        f"{listing / python:.1f}x   {target(listing < 0.150, '< 150 ms')}",
    )
    show("  of which beyond importing twctl (open, housekeep, list, print)", seconds(listing - cli))
    return python


def in_process_figures(store: Store) -> None:
    """The work of `twctl list --json` without start-up: where the part beyond imports goes."""
    out = io.StringIO()

    def render() -> None:
        out.seek(0)
        out.truncate()
        print_records(control.listing(store), LIST_COLUMNS, as_json=True, empty="", out=out)

    def housekeep() -> None:
        housekeeping.housekeep(store)

    parts = {
        f"housekeeping ({LIVE_TASKS} supervisor liveness checks)": housekeep,
        "listing() and JSON output": render,
    }
    for label, action in parts.items():
        show(f"  in-process: {label}", seconds(median_of(action, RUNS)))


@dataclass
class FeedbackTask:
    """A live task with a feedback file that its supervisor (this process) reads."""

    label: str
    lines: int
    path: Path
    taskid: int = 0
    token_hash: str = ""
    catch_up: float = 0.0  # the supervisor's reads until the whole file is parsed
    looks: int = 0
    repeated: list[float] = field(default_factory=list)

    def append_line(self) -> None:
        """What a live task does between two looks at its feedback."""
        with open(self.path, "a") as file:
            file.write(f"[progress]appended {len(self.repeated)}\n")


def supervisor_look(feedback: FeedbackFile) -> dict[str, str] | None:
    """One look of the supervisor's feedback source: the heartbeat, then what changed."""
    feedback.mtime()
    return feedback.changes(time.time())


def catch_up(task: FeedbackTask, feedback: FeedbackFile) -> None:
    """Looks until the whole file is parsed: each look reads for at most LOOP_READ_BUDGET."""
    started = time.perf_counter()
    while True:
        task.looks += 1
        supervisor_look(feedback)
        if feedback.incomplete is None:
            break
    task.catch_up = time.perf_counter() - started


def feedback_figures(store: Store, db: Path, folder: Path, python: float) -> FeedbackTask:
    """The supervisor parses the feedback file as it grows; `twctl feedback ID` reads what it
    published in the row, so its cost does not depend on the file at all.

    Each repeated look follows a one-line append: it reads only what is new, whatever the
    file's size. Then `twctl feedback` is timed against a bare interpreter.
    """
    tasks = [
        FeedbackTask("1M", BIG_LINES, folder / "big.log"),
        FeedbackTask("1k", SMALL_LINES, folder / "small.log"),
    ]
    files = {}
    for task in tasks:
        write_feedback(task.path, task.lines)
        task.taskid, task.token_hash = start_live_task(store, f"feedback-{task.label}", task.path)
        files[task.label] = feedback = FeedbackFile(task.path)
        catch_up(task, feedback)
    for _ in range(FEEDBACK_RUNS):
        for task in tasks:
            task.append_line()
            started = time.perf_counter()
            values = supervisor_look(files[task.label])
            task.repeated.append(time.perf_counter() - started)
            if values is None:
                raise RuntimeError(f"the supervisor missed the line appended to {task.label}")
            store.heartbeat(task.taskid, task.token_hash, time.time(), values)
    for task in tasks:
        show(
            f"supervisor: first parse of a {task.lines:,}-line file",
            seconds(task.catch_up),
            f"{task.looks} look(s) of at most {LOOP_READ_BUDGET:g} s",
        )
    for task in tasks:
        show(
            f"supervisor: a look after a 1-line append, {task.lines:,}-line file",
            seconds(statistics.median(task.repeated)),
        )
    big, small = tasks
    ratio = statistics.median(big.repeated) / statistics.median(small.repeated)
    show(
        f"  1M-line over 1k-line file (median of {FEEDBACK_RUNS})",
        f"{ratio:.2f}x",
        target(ratio < 1.25, "size-independent, < 1.25x"),
    )
    for task in tasks:
        values = run_json(twctl(db, "feedback", str(task.taskid)))
        if values.get("progress") != f"appended {FEEDBACK_RUNS - 1}":
            raise RuntimeError(f"twctl feedback of the {task.label} task misses the appended line")
    runs = wall_times({task.label: twctl(db, "feedback", str(task.taskid)) for task in tasks}, RUNS)
    for task in tasks:
        wall = statistics.median(runs[task.label])
        show(
            f"twctl feedback, {task.lines:,}-line file (median of {RUNS})",
            seconds(wall),
            f"{wall / python:.1f}x python   {target(wall < 0.150, '< 150 ms')}",
        )
    return small


@dataclass
class Imported:
    """One line of `python -X importtime`: a module and the modules it imported first."""

    name: str
    depth: int
    self_us: int
    total_us: int
    parent: Imported | None = None

    @property
    def importers(self) -> list[str]:
        """First-party modules on the way from the top level to this import, outermost first."""
        chain = []
        node = self.parent
        while node is not None:
            if node.name.startswith("taskwatcher."):
                chain.append(node.name)
            node = node.parent
        return chain[::-1]


def import_tree(report: str) -> list[Imported]:
    """Parse -X importtime output; children come before their parent, one indent deeper."""
    nodes: list[Imported] = []
    pending: list[Imported] = []
    for line in report.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, total, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip())) // 2
        node = Imported(name.strip(), depth, int(own), int(total))
        while pending and pending[-1].depth > depth:
            pending.pop().parent = node
        pending.append(node)
        nodes.append(node)
    return nodes


def import_profile(db: Path, words: list[str], before: Callable[[], object] | None = None) -> None:
    """The heaviest packages a twctl command imports, with the first-party module to blame.

    An import at the top level of the output that comes after twctl's own module was made
    while the command ran (a lazy import inside a function): it has no importer to name.
    """
    runs = []
    for _ in range(PROFILE_RUNS):
        if before is not None:
            before()
        result = subprocess.run(
            [sys.executable, "-X", "importtime", TWCTL, "--db", str(db), *words],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(import_tree(result.stderr))
    totals: dict[str, list[int]] = {}
    for nodes in runs:
        for node in nodes:
            totals.setdefault(node.name, []).append(node.total_us)
    median_us = {name: statistics.median(values) for name, values in totals.items()}
    first = runs[0]
    everything = sum(median_us[node.name] for node in first if node.depth == 0)
    print(
        f"imports of `twctl {' '.join(words)}` (python -X importtime, median of {PROFILE_RUNS}):"
        f" {seconds(everything / 1e6)} in all",
        flush=True,
    )
    cli_index = next(
        index for index, node in enumerate(first) if node.name == "taskwatcher.cli.twctl"
    )
    packages = [
        (
            node,
            f"from {' <- '.join(reversed(node.importers))}"
            if node.importers
            else "imported inside a function, while the command ran",
        )
        for index, node in enumerate(first)
        if "." not in node.name and not node.name.startswith(("taskwatcher", "_"))
        if node.importers or (node.depth == 0 and index > cli_index)
    ]
    packages.sort(key=lambda pair: median_us[pair[0].name], reverse=True)
    for node, source in packages[:SHOWN_IMPORTS]:
        show(f"  {node.name}", seconds(median_us[node.name] / 1e6), source)
    ours = [node for node in first if node.name.startswith("taskwatcher.")]
    ours.sort(key=lambda node: median_us[node.name], reverse=True)
    for node in ours[:SHOWN_FIRST_PARTY]:
        show(f"  {node.name} (with what it imports)", seconds(median_us[node.name] / 1e6))


def main() -> None:
    """Build the database, then print list and feedback figures and the import profiles.

    The benchmark keeps one Store open throughout, as the live tasks' supervisors would keep
    theirs, and never opens a second one: open_store() reads the file's header with
    os.open()/os.close(), and that close() drops every POSIX lock this process holds on the
    file, sqlite's included, after which a twctl process believes it is the last user,
    checkpoints and deletes the -wal and -shm files under the open Store.
    """
    with tempfile.TemporaryDirectory(prefix="twbench-twctl-") as folder:
        db = Path(folder) / "twctl.db"
        with open_store(db) as store:
            fill_history(db, HISTORY_ROWS, NAMES)
            for index in range(LIVE_TASKS):
                start_live_task(store, f"live-{index}")
            python = list_figures(db)
            in_process_figures(store)
            import_profile(db, ["list", "--json"])
            small = feedback_figures(store, db, Path(folder), python)
            import_profile(db, ["feedback", str(small.taskid)], before=small.append_line)


if __name__ == "__main__":
    main()
