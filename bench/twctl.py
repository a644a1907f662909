"""twctl's response time as a user sees it: interpreter start-up, imports, housekeeping, work.

On a well-used database (200 live tasks, 100,000 history rows), `twctl list --json` and
`twctl feedback ID` on a 1M-line feedback file, against a bare interpreter and interpreters
that only import the store or twctl, measured in the same run; then where the time goes:
in-process costs and `python -X importtime` profiles naming the heaviest imports.

Targets: `list` under 150 ms wall, interpreter start included; `feedback` after a one-line
append under 150 ms and independent of the file's size (1M lines against 1k lines)."""

from __future__ import annotations

import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from bench.measure import fill_history, median_of, seconds, show, target, wall_times, write_feedback
from taskwatcher.cli.columns import LIST_COLUMNS
from taskwatcher.cli.render import print_records
from taskwatcher.engine import control, housekeeping
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
#: What parsing feedback costs a fresh process before the first line: the grammar's terminals.
LOAD_GRAMMAR = (
    "import taskwatcher.cli.twctl\nfrom taskwatcher.grammar.fastpath import matchers\nmatchers()"
)


def start_live_task(store: Store, name: str, feedback: Path | None = None) -> int:
    """A started task whose supervisor is this process, so housekeeping finds it alive.

    No child is recorded (pid, child_ctime and pgid stay empty) and no process carries its
    token: were the task ever judged lost, housekeeping then has nothing to signal, and this
    process cannot be stopped by its own benchmark.
    """
    me = identity_of(os.getpid())
    assert me is not None
    taskid = store.reserve(name, info1="bench")
    launch = Launch(
        supervisor_pid=me.pid,
        supervisor_ctime=me.create_time,
        host=socket.gethostname(),
        token_hash=token_digest(new_token()),
        uid=os.getuid(),
        command=["sleep", "3600"],
        timeout=30,
        has_feedback=feedback is not None,
        feedpath=None if feedback is None else str(feedback),
    )
    store.claim(taskid, launch)
    return taskid


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
    label: str
    lines: int
    path: Path
    taskid: int = 0
    first: float = 0.0
    repeated: list[float] = field(default_factory=list)

    def append_line(self) -> None:
        """What a live task does between two looks at its feedback."""
        with open(self.path, "a") as file:
            file.write(f"[progress]appended {len(self.repeated)}\n")


def feedback_figures(store: Store, db: Path, folder: Path, python: float) -> FeedbackTask:
    """`twctl feedback ID`: the first call parses the whole file, later ones only what is new.

    Each repeated call follows a one-line append to both files. Two references take turns
    with them: an interpreter importing twctl, and one that also loads the feedback grammar
    (the terminals the parser is built from), which every process that parses pays once.
    """
    tasks = [
        FeedbackTask("1M", BIG_LINES, folder / "big.log"),
        FeedbackTask("1k", SMALL_LINES, folder / "small.log"),
    ]
    for task in tasks:
        write_feedback(task.path, task.lines)
        task.taskid = start_live_task(store, f"feedback-{task.label}", task.path)
    for task in tasks:
        task.first = wall_times({"first": twctl(db, "feedback", str(task.taskid))}, 1)["first"][0]
    references = {
        "cli": [sys.executable, "-c", "import taskwatcher.cli.twctl"],
        "grammar": [sys.executable, "-c", LOAD_GRAMMAR],
    }
    reference_runs: dict[str, list[float]] = {label: [] for label in references}
    for _ in range(FEEDBACK_RUNS):
        for task in tasks:
            task.append_line()
        commands = {task.label: twctl(db, "feedback", str(task.taskid)) for task in tasks}
        samples = wall_times(commands | references, 1)
        for task in tasks:
            task.repeated.append(samples[task.label][0])
        for label in references:
            reference_runs[label] += samples[label]
    for task in tasks:
        values = run_json(twctl(db, "feedback", str(task.taskid)))
        if values.get("progress") != f"appended {FEEDBACK_RUNS - 1}":
            raise RuntimeError(f"feedback of the {task.label} file misses the appended line")
    big, small = tasks
    for task in tasks:
        show(
            f"twctl feedback, {task.lines:,}-line file, first call (full parse)",
            seconds(task.first),
            f"{task.first / python:.1f}x python",
        )
    for task in tasks:
        repeated = statistics.median(task.repeated)
        show(
            f"twctl feedback, {task.lines:,}-line file, after a 1-line append",
            seconds(repeated),
            f"{repeated / python:.1f}x python   {target(repeated < 0.150, '< 150 ms')}",
        )
    ratio = statistics.median(big.repeated) / statistics.median(small.repeated)
    show(
        f"  1M-line over 1k-line file, repeated call (median of {FEEDBACK_RUNS})",
        f"{ratio:.2f}x",
        target(ratio < 1.25, "size-independent, < 1.25x"),
    )
    cli, grammar = (statistics.median(reference_runs[label]) for label in references)
    show("  reference: python -c 'import taskwatcher.cli.twctl'", seconds(cli))
    show(
        "  reference: the same, then load the feedback grammar",
        seconds(grammar),
        f"+{seconds(grammar - cli)} for the grammar (lark, LALR build)",
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
