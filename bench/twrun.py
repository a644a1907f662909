"""twrun's own costs: start-up, noticing the child's exit, the timeout kill, idle CPU.

Targets: `twrun -- true` under 150 ms more than a bare `true`; the child's exit noticed
within 20 ms; a silent task signalled within 250 ms of its heartbeat deadline; under 1% of
one core while supervising a sleeping task. The design this replaces polled every 2-3 s, so
`twrun -- true` took about 3 s. Every figure is a median over several runs, next to a
baseline measured in the same run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from bench.measure import seconds, show, target, wall_times
from taskwatcher.engine.store import open_store

TWRUN = str(Path(sys.executable).parent / "twrun")
TWCTL = str(Path(sys.executable).parent / "twctl")
START_RUNS = 15
NEW_DB_RUNS = 5
EXIT_RUNS = 15
KILL_RUNS = 5
IDLE_SECONDS = 30.0
#: The idle figure again, shorter, among this many extra sleeping processes.
CROWD = 1000
CROWDED_IDLE_SECONDS = 15.0
#: `twrun -- true` under the original design, which looked at its child every 2-3 s.
ORIGINAL_TRUE = 3.0

#: Child for the exit delay: writes one feedback line if asked, sleeps (so twrun is settled in
#: its loop), writes CLOCK_MONOTONIC
#: (system-wide on Linux, so comparable across processes) and the wall clock (to compare with
#: the history's endtime), and leaves with _exit() at once.
STAMP_THEN_EXIT = """
import os, sys, time
if len(sys.argv) > 3:
    with open(os.environ["TASKWATCHER_FEEDBACK"], "a") as feedback:
        feedback.write("[progress]done\\n")
time.sleep(float(sys.argv[2]))
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, f"{time.monotonic()!r} {time.time()!r}".encode())
os._exit(0)
"""

#: The same stamp as the last statement of an interpreter that imported what twrun imports:
#: what remains is the interpreter's own shutdown with those modules loaded.
IMPORT_STAMP_EXIT = """
import sys, time, taskwatcher.cli.twrun
with open(sys.argv[1], "w") as stamp:
    stamp.write(f"{time.monotonic()!r} {time.time()!r}")
sys.exit(0)
"""

#: Feedback task for the timeout kill and the idle figure: one line, then sleep. On SIGTERM it
#: writes the wall-clock time (the feedback file's mtime is wall-clock too) and exits.
ONE_LINE_THEN_SLEEP = """
import os, signal, sys, time
def on_term(signum, frame):
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, repr(time.time()).encode())
    os._exit(128 + signum)
signal.signal(signal.SIGTERM, on_term)
with open(os.environ["TASKWATCHER_FEEDBACK"], "a") as feedback:
    feedback.write("[progress]started\\n")
time.sleep(float(sys.argv[2]))
"""

#: The baseline supervisor for the exit delay: a bare interpreter that runs and waits.
PLAIN_PARENT = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def wait_for_end(child: subprocess.Popen) -> tuple[int, float]:
    """Block in wait4() until the process ends; its exit code and the monotonic time it ended."""
    _, status, _ = os.wait4(child.pid, 0)
    ended = time.monotonic()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return child.returncode, ended


def launched(command: Sequence[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_if_running(child: subprocess.Popen) -> None:
    """Leave nothing behind if a measurement failed half-way (twrun's child dies with it)."""
    if child.returncode is None:
        child.kill()
        child.wait()


def reserve(db: Path, name: str) -> int:
    result = subprocess.run(
        [TWCTL, "--db", str(db), "reserve", "--name", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout)


def start_up(folder: Path) -> None:
    """`twrun -- true` against what it wraps and against a bare interpreter."""
    db = folder / "start.db"
    subprocess.run([TWRUN, "--db", str(db), "--", "true"], check=True)  # creates the database
    runs = wall_times(
        {
            "true": ["true"],
            "python": [sys.executable, "-c", "pass"],
            "twrun": [TWRUN, "--db", str(db), "--", "true"],
        },
        START_RUNS,
    )
    bare, python, twrun = (statistics.median(runs[key]) for key in ("true", "python", "twrun"))
    show(f"bare `true` (baseline, median of {START_RUNS})", seconds(bare))
    show("python -c pass (same interpreter as twrun)", seconds(python), f"{python / bare:.0f}x")
    extra = twrun - bare
    show(
        f"twrun -- true, existing database (median of {START_RUNS})",
        seconds(twrun),
        f"+{seconds(extra)} over true   {target(extra < 0.150, '< +150 ms')}",
    )
    show("  twrun's cost beyond a bare interpreter start", f"+{seconds(twrun - python)}")
    show(
        f"  fastest of the {START_RUNS} (least disturbed by the rest of the machine)",
        seconds(min(runs["twrun"])),
        f"python -c pass: {seconds(min(runs['python']))}",
    )
    fresh = [
        wall_times({"twrun": [TWRUN, "--db", str(folder / f"new-{run}.db"), "--", "true"]}, 1)
        for run in range(NEW_DB_RUNS)
    ]
    show(
        f"twrun -- true, database created by the run (median of {NEW_DB_RUNS})",
        seconds(statistics.median(sample["twrun"][0] for sample in fresh)),
    )
    show(
        f"  ahead of the original design (~{ORIGINAL_TRUE:g} s for a `true`)",
        f"{ORIGINAL_TRUE / twrun:.0f}x",
        "faster",
    )


def exit_delays(folder: Path) -> None:
    """From the child's last instruction to the task archived, and to twrun itself ended.

    The child writes CLOCK_MONOTONIC and the wall clock, then calls _exit(). The history row's
    endtime (taken inside the archiving transaction) gives the moment twrun had noticed the
    exit, checked for leftover processes, read the final feedback and recorded the end. This
    process blocks in wait4() on twrun and reads the monotonic clock when it returns, for the
    delay a shell sees, which adds twrun's interpreter shutdown. Baselines: the same child run
    directly and under a plain `subprocess.run` interpreter, and the shutdown of an
    interpreter holding twrun's modules, all measured the same way in this run.
    """
    db = folder / "exit.db"
    feeds = folder / "exit-feeds"
    feeds.mkdir()
    stamp = folder / "exit.stamp"
    child = [sys.executable, "-S", "-c", STAMP_THEN_EXIT, str(stamp), "0.3"]
    commands: dict[str, Callable[[], list[str]]] = {
        "direct": lambda: child,
        "plain": lambda: [sys.executable, "-c", PLAIN_PARENT, *child],
        "twrun": lambda: [TWRUN, "--db", str(db), "--", *child],
        "feedback": lambda: [
            *[TWRUN, "--db", str(db), "--taskid", str(reserve(db, "bench-exit"))],
            *["--feedpath", str(feeds), "--", *child, "feedback"],
        ],
        "shutdown": lambda: [sys.executable, "-c", IMPORT_STAMP_EXIT, str(stamp)],
    }
    delays: dict[str, list[float]] = {label: [] for label in commands}
    archived: dict[str, list[float]] = {"twrun": [], "feedback": []}
    for _ in range(EXIT_RUNS):
        for label, command in commands.items():
            process = launched(command())
            try:
                code, ended = wait_for_end(process)
            finally:
                stop_if_running(process)
            if code != 0:
                raise RuntimeError(f"{label} run ended with {code}: {process.stderr.read()!r}")
            exited, exited_wall = map(float, stamp.read_text().split())
            delays[label].append(ended - exited)
            if label in archived:
                with open_store(db) as store:
                    archived[label].append(store.history(limit=1)[0].endtime - exited_wall)
    print(
        "exit delay: the child stamps its clocks and _exit()s; we wait4() on its parent",
        flush=True,
    )
    median = {label: statistics.median(values) for label, values in delays.items()}
    plain = median["plain"]
    show(f"  child run directly (floor, median of {EXIT_RUNS})", seconds(median["direct"]))
    show("  under `python -c subprocess.run(...)` (baseline)", seconds(plain), "1.00x")
    for label, task in (("twrun", "task without feedback"), ("feedback", "feedback task")):
        noticed = statistics.median(archived[label])
        show(
            f"  twrun, {task}: child exit to task archived",
            seconds(noticed),
            f"{noticed / plain:.2f}x   {target(noticed < 0.020, '< 20 ms')}",
        )
        show("    worst", seconds(max(archived[label])))
        show(
            f"  twrun, {task}: child exit to twrun's own end",
            seconds(median[label]),
            f"{median[label] / plain:.2f}x   worst {seconds(max(delays[label]))}",
        )
    show(
        "  shutdown of an interpreter holding twrun's modules",
        seconds(median["shutdown"]),
        f"{median['shutdown'] / plain:.2f}x",
    )
    show(
        f"  ahead of the original design (2-3 s poll: ~{2.5:g} s on average)",
        f"{2.5 / median['twrun']:.0f}x",
        "faster",
    )


def timeout_kills(folder: Path) -> None:
    """A task writes one line and falls silent: how late after its deadline is it signalled?

    The deadline is the feedback file's mtime (what twrun reads) plus --timeout; the task's
    SIGTERM handler writes time.time() as its first act. mtime comes from the kernel's coarse
    clock, up to one tick behind time.time(), which can only make the figure look later.
    """
    db = folder / "kill.db"
    feeds = folder / "feeds"
    feeds.mkdir()
    stamp = folder / "kill.stamp"
    timeout = 1.0
    late_signal, late_end = [], []
    for _ in range(KILL_RUNS):
        taskid = reserve(db, "bench-timeout")
        stamp.unlink(missing_ok=True)
        process = launched(
            [
                TWRUN,
                "--db",
                str(db),
                "--taskid",
                str(taskid),
                "--feedpath",
                str(feeds),
                "--timeout",
                f"{timeout:g}",
                "--keep-feedback",
                "--",
                *[sys.executable, "-S", "-c", ONE_LINE_THEN_SLEEP, str(stamp), "60"],
            ]
        )
        try:
            code, ended_monotonic = wait_for_end(process)
        finally:
            stop_if_running(process)
        ended = time.time() - (time.monotonic() - ended_monotonic)
        if code != 124 or not stamp.exists():
            raise RuntimeError(f"expected a timeout (124) and a SIGTERM stamp, got {code}")
        deadline = (feeds / f"feedback_{taskid}.log").stat().st_mtime + timeout
        late_signal.append(float(stamp.read_text()) - deadline)
        late_end.append(ended - deadline)
    print(
        f"timeout kill: task writes one line, --timeout {timeout:g}, {KILL_RUNS} runs", flush=True
    )
    signal_median, worst = statistics.median(late_signal), max(late_signal)
    show(
        "  SIGTERM after the deadline (mtime + timeout), median",
        seconds(signal_median),
        target(worst < 0.250, "worst < 250 ms"),
    )
    show("  SIGTERM after the deadline, worst", seconds(worst))
    show("  twrun's end after the deadline, median", seconds(statistics.median(late_end)))
    show(
        "  ahead of the original design (2-3 s poll: ~2.5 s late on average)",
        f"{2.5 / max(signal_median, 1e-3):.0f}x",
        "earlier",
    )


def idle_cpu(folder: Path, duration: float, crowd: int = 0) -> None:
    """twrun's own CPU (psutil, its process only) while its feedback task sleeps.

    With `crowd`, that many extra `sleep` processes run meanwhile, as on a busy build host:
    whatever twrun does per process on the machine shows up as a higher figure.
    """
    db = folder / f"idle-{crowd}.db"
    feeds = folder / f"idle-feeds-{crowd}"
    feeds.mkdir()
    sleepers = [
        subprocess.Popen(["sleep", f"{duration + 60:g}"], stdin=subprocess.DEVNULL)
        for _ in range(crowd)
    ]
    try:
        taskid = reserve(db, "bench-idle")
        feedback = feeds / f"feedback_{taskid}.log"
        process = launched(
            [
                *[TWRUN, "--db", str(db), "--taskid", str(taskid)],
                *["--feedpath", str(feeds), "--timeout", "60", "--"],
                *[sys.executable, "-S", "-c", ONE_LINE_THEN_SLEEP, str(folder / "idle.stamp")],
                f"{duration:g}",
            ]
        )
        try:
            watched = psutil.Process(process.pid)
            while not feedback.exists():
                time.sleep(0.01)
            time.sleep(1.0)  # past start-up: the window holds supervision only
            before = watched.cpu_times(), watched.num_ctx_switches().voluntary, time.monotonic()
            time.sleep(duration - 2.5)  # ends before the task does
            after = watched.cpu_times(), watched.num_ctx_switches().voluntary, time.monotonic()
            processes = len(psutil.pids())
            code, _ = wait_for_end(process)
        finally:
            stop_if_running(process)
    finally:
        for sleeper in sleepers:
            sleeper.kill()
        for sleeper in sleepers:
            sleeper.wait()
    if code != 0:
        raise RuntimeError(f"idle task ended with {code}")
    window = after[2] - before[2]
    used = (after[0].user + after[0].system) - (before[0].user + before[0].system)
    wakeups = after[1] - before[1]
    share = used / window
    print(
        f"idle: --timeout 60 task writes one line and sleeps {duration:g} s;"
        f" {processes} processes on the machine{f' ({crowd} extra)' if crowd else ''}",
        flush=True,
    )
    show(
        f"  twrun's user+sys CPU over {window:.1f} s of supervision",
        f"{share * 100:.2f} %",
        f"of one core ({seconds(used)})   {target(share < 0.01, '< 1%')}",
    )
    show(
        "  twrun's wake-ups per second (voluntary context switches)",
        f"{wakeups / window:.1f}",
        f"{seconds(used / max(wakeups, 1))} CPU per wake-up",
    )


def main() -> None:
    """Print start-up, exit delay, timeout kill delay and idle CPU, each with its target."""
    with tempfile.TemporaryDirectory(prefix="twbench-twrun-") as folder:
        start_up(Path(folder))
        exit_delays(Path(folder))
        timeout_kills(Path(folder))
        idle_cpu(Path(folder), IDLE_SECONDS)
        idle_cpu(Path(folder), CROWDED_IDLE_SECONDS, crowd=CROWD)


if __name__ == "__main__":
    main()
