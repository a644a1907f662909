"""How lean taskwatcher is, as users install it: start-up, imports, an idle supervisor's memory,
200 tasks at once; each figure a ratio to a baseline measured in this run.

The package is installed into a fresh venv with `pip install <source>` (not editable: the
editable install's import hook costs every interpreter start). <source> is this checkout, or
$BENCH_LEAN_SOURCE (an older checkout, for before-and-after figures). supervisord is
installed from the package index into a venv of its own, for the 200-task comparison.

Targets: `twrun -- true` and the twctl commands within 3x `python -c pass` (wall and CPU);
an idle supervisor's PSS within 1.4x that of an interpreter holding an open WAL sqlite
connection; 200 concurrent `twrun -- sleep 0.01` within 3x supervisord. Beside them: the
floor (the modules twrun needs, imported alone). Each figure again with the command server
(`TASKWATCHER_SERVER=1`, warm): its CPU counts the client's, the server's and the worker's
(reaped by the server: /proc/<server>/stat), its memory the worker's and the waiting client's.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

from bench.measure import seconds, show, target

SOURCE = Path(os.environ.get("BENCH_LEAN_SOURCE", Path(__file__).resolve().parent.parent))
START_RUNS = 20
IDLE = 100
CROWD = 200
#: The memory baseline: the same interpreter, an open WAL connection, a query, then sleep.
WAL_SLEEPER = (
    "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1]); db.execute('PRAGMA journal_mode = WAL')\n"
    "db.execute('SELECT count(*) FROM sqlite_master').fetchall(); print(flush=True)\n"
    "time.sleep(120)\n"
)


def venv(folder: Path, *packages: str) -> Path:
    """A fresh venv with `packages` installed; returns its bin folder."""
    subprocess.run(["python3", "-m", "venv", folder], check=True)
    subprocess.run(
        [folder / "bin" / "python", "-m", "pip", "install", "--quiet", *packages],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return folder / "bin"


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run; CPU counts the children it waited for, too."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"{command}: exit {child.returncode}: {child.stderr.read()!r}")
    child.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def start_up(bin_: Path, folder: Path) -> None:
    """Median wall and CPU of each command, taking turns with `python -c pass`."""
    db = folder / "start.db"
    env = {**os.environ, "TASKWATCHER_DB": str(db)}
    py = str(bin_ / "python")
    fill_finished(bin_, env, 60)  # ids 1 to 60, in history
    reserve_live(py, db, 100)
    floor = stdlib_floor(bin_, env, folder)
    commands = {
        "python -c pass": [py, "-c", "pass"],
        f"the {floor.count(',') + 1} stdlib modules twrun holds, alone (the floor)": [
            py,
            "-c",
            floor,
        ],
        "twrun -- true": [str(bin_ / "twrun"), "--", "true"],
        "twctl list --json (100 live)": [str(bin_ / "twctl"), "list", "--json"],
        "twctl reserve": [str(bin_ / "twctl"), "reserve"],
        "twctl feedback 1": [str(bin_ / "twctl"), "feedback", "1"],
        "twctl history --limit 50": [str(bin_ / "twctl"), "history", "--limit", "50"],
    }
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    for _ in range(START_RUNS):
        for label, command in commands.items():
            samples[label].append(run_timed(command, env))
    base_wall, base_cpu = _medians(samples["python -c pass"])
    for label, runs in samples.items():
        wall, cpu = _medians(runs)
        ratio = max(wall / base_wall, cpu / base_cpu)
        verdict = "baseline" if label == "python -c pass" else target(ratio <= 3, "<= 3x")
        if "the floor" in label:
            verdict = "what any start-up on these modules costs"
        show(f"{label}: wall {seconds(wall)}, cpu {seconds(cpu)}", f"{ratio:.1f}x", verdict)
    served = served_env(env, folder)
    with command_server(bin_, served) as server:
        for label, command in commands.items():
            if label.startswith(("twrun", "twctl")):
                wall, cpu = served_timed(command, served, server)
                ratio = max(wall / base_wall, cpu / base_cpu)
                show(
                    f"  served: {label}: wall {seconds(wall)}, cpu {seconds(cpu)}",
                    f"{ratio:.1f}x",
                    target(ratio <= 3, "<= 3x"),
                )


def stdlib_floor(bin_: Path, env: dict[str, str], folder: Path) -> str:
    """An import of every module of other packages than this one that `twrun -- true` holds
    (as its supervisor dumps them) and a bare interpreter does not: the floor under any
    start-up that needs them, measured beside the commands."""
    dump = folder / "twrun-modules"
    subprocess.run(
        [bin_ / "twrun", "--", "true"], env={**env, "TASKWATCHER_DUMP_MODULES": str(dump)},
        check=True,
    )  # fmt: skip
    bare = subprocess.run(
        [bin_ / "python", "-c", "import sys; print(*sys.modules)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    held = set(dump.read_text().split()) - set(bare) - {"__main__"}
    return "import " + ", ".join(
        sorted(name for name in held if name.split(".")[0] != "taskwatcher")
    )


def served_env(env: dict[str, str], folder: Path) -> dict[str, str]:
    """`env` with the command server on, its socket in a folder of this run."""
    runtime = folder / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {**env, "XDG_RUNTIME_DIR": str(runtime), "TASKWATCHER_SERVER": "1"}


@contextlib.contextmanager
def command_server(bin_: Path, env: dict[str, str]) -> Iterator[int]:
    """A warm command server (started by a first served command); its pid. Ended after."""
    subprocess.run([bin_ / "twrun", "--", "true"], env=env, check=True)
    folder = Path(env["XDG_RUNTIME_DIR"]) / "taskwatcher"
    wait_until(lambda: any(folder.glob("*.sock")), 30)
    (lock,) = folder.glob("*.lock")
    pid = int(lock.read_text())
    subprocess.run([bin_ / "twrun", "--", "true"], env=env, check=True)  # served: warm
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30)


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def served_timed(command: list[str], env: dict[str, str], server: int) -> tuple[float, float]:
    """Median wall of START_RUNS served runs; CPU per run: the client's median, plus the
    server's own and its reaped workers' CPU over all runs, divided by the runs (the kernel
    counts those in clock ticks, too coarse for one run)."""
    before = _server_cpu(server)
    runs = [run_timed(command, env) for _ in range(START_RUNS)]
    wall, client_cpu = _medians(runs)
    return wall, client_cpu + (_server_cpu(server) - before) / START_RUNS


def _server_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(tick) for tick in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def reserve_live(py: str, db: Path, count: int) -> None:
    script = (
        "import sys\nfrom taskwatcher.engine.store import open_store\n"
        "with open_store(sys.argv[1]) as store:\n"
        f"    for n in range({count}): store.reserve(f'live-{{n}}')\n"
    )
    subprocess.run([py, "-c", script, db], check=True)


def fill_finished(bin_: Path, env: dict[str, str], count: int) -> None:
    """`count` finished tasks, each with its feedback."""
    report = 'printf "[progress]100\\n[step]teardown\\n" >> "$TASKWATCHER_FEEDBACK"'
    command = [bin_ / "twrun", "--", "sh", "-c", report]
    tasks = [subprocess.Popen(command, env=env) for _ in range(count)]
    for task in tasks:
        task.wait()


def import_times(bin_: Path, folder: Path) -> None:
    """`python -X importtime` of the three commands: the biggest cumulative imports."""
    env = {**os.environ, "TASKWATCHER_DB": str(folder / "imports.db")}
    for label, argv in (
        ("twrun -- true", ["twrun", "--", "true"]),
        ("twctl list --json", ["twctl", "list", "--json"]),
        ("twctl reserve", ["twctl", "reserve"]),
    ):
        script = bin_ / argv[0]
        run = [bin_ / "python", "-X", "importtime", script, *argv[1:]]
        stderr = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stderr
        rows = []
        for line in stderr.splitlines():
            if line.startswith("import time:") and "cumulative" not in line:
                _, cumulative, name = line[len("import time:") :].split("|")
                rows.append((int(cumulative), name.strip()))
        top = sorted(rows, reverse=True)[:10]
        print(f"  importtime, {label}: " + ", ".join(f"{name} {us / 1000:.1f}" for us, name in top))


def pss_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in KiB, from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Pss"], fields["Rss"]


def idle_memory(bin_: Path, folder: Path) -> None:
    """Median PSS of IDLE idle supervisors, and of IDLE baseline interpreters beside them;
    then IDLE served ones (the workers, and the clients that wait for them)."""
    db = folder / "idle.db"
    env = {**os.environ, "TASKWATCHER_DB": str(db)}
    baseline_db = folder / "baseline.db"
    sqlite3.connect(baseline_db).execute("CREATE TABLE t (x)").connection.close()
    served = served_env({**env, "TASKWATCHER_DB": str(folder / "served-idle.db")}, folder)
    sleep = ["--", "sleep", "120"]
    with command_server(bin_, served) as server:
        twruns = [
            subprocess.Popen([bin_ / "twrun", *sleep], env=env, start_new_session=True)
            for _ in range(IDLE)
        ]
        clients = [
            subprocess.Popen([bin_ / "twrun", *sleep], env=served, start_new_session=True)
            for _ in range(IDLE)
        ]
        sleepers = [
            subprocess.Popen(
                [bin_ / "python", "-c", WAL_SLEEPER, baseline_db], stdout=subprocess.PIPE, text=True
            )
            for _ in range(IDLE)
        ]
        try:
            for sleeper in sleepers:
                sleeper.stdout.readline()
            wait_until(lambda: running_count(db) == IDLE, 60)
            wait_until(lambda: running_count(folder / "served-idle.db") == IDLE, 60)
            time.sleep(1)  # each supervisor past its first looks
            ours = [pss_kib(twrun.pid) for twrun in twruns]
            theirs = [pss_kib(sleeper.pid) for sleeper in sleepers]
            workers = [pss_kib(pid)[0] for pid in children(server)]
            waiting = [pss_kib(client.pid)[0] for client in clients]
        finally:
            for process in twruns + clients + sleepers:
                process.send_signal(signal.SIGTERM)
            for process in twruns + clients + sleepers:
                process.wait(timeout=60)
    (pss, rss), (base_pss, base_rss) = (
        (statistics.median(p for p, _ in rows), statistics.median(r for _, r in rows))
        for rows in (ours, theirs)
    )
    label = f"idle supervisor PSS {pss / 1024:.1f} MiB (RSS {rss / 1024:.1f}) vs baseline"
    show(f"{label} {base_pss / 1024:.1f} MiB (RSS {base_rss / 1024:.1f})", f"{pss / base_pss:.1f}x")
    print(f"{'':<64}{'':>12}   {target(pss / base_pss <= 1.4, '<= 1.4x')}")
    worker, client = statistics.median(workers), statistics.median(waiting)
    show(
        f"  served: the worker (supervisor) PSS {worker / 1024:.1f} MiB",
        f"{worker / base_pss:.1f}x",
        target(worker / base_pss <= 1.4, "<= 1.4x"),
    )
    show(
        f"  served: the waiting client {client / 1024:.1f} MiB, both together",
        f"{(worker + client) / base_pss:.1f}x",
    )


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running_count(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute("SELECT count(*) FROM tasks WHERE pid IS NOT NULL").fetchone()[0]


def finished_count(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute("SELECT count(*) FROM history").fetchone()[0]


def wait_until(predicate, limit: float) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if predicate():
                return
        except sqlite3.Error:  # not created yet, or busy: look again
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("gave up waiting")
        time.sleep(0.02)


def crowd(bin_: Path, supervisor_bin: Path | None, folder: Path) -> None:
    """CROWD tasks of `sleep 0.01` at once, until all are recorded: twrun, supervisord,
    timeout(1), and tsp/nq where installed."""
    twrun = [bin_ / "twrun", "--", "sleep", "0.01"]
    ours = until_recorded(
        folder / "crowd.db", lambda env: [Popen(twrun, env=env) for _ in range(CROWD)]
    )
    served = served_env({**os.environ, "TASKWATCHER_DB": str(folder / "warm.db")}, folder)
    with command_server(bin_, served) as _:
        warm = until_recorded(
            folder / "served-crowd.db",
            lambda env: [
                Popen(twrun, env={**served, "TASKWATCHER_DB": env["TASKWATCHER_DB"]})
                for _ in range(CROWD)
            ],
        )
    started = time.perf_counter()
    for plain in [subprocess.Popen(["timeout", "5", "sleep", "0.01"]) for _ in range(CROWD)]:
        plain.wait()
    show(f"{CROWD} x timeout 5 sleep 0.01", seconds(time.perf_counter() - started))
    theirs = None if supervisor_bin is None else supervisord_crowd(supervisor_bin, folder)
    if theirs is None:
        show("supervisord", "", "not installed (no package index?)")
    else:
        show(f"{CROWD} x supervisord sleep 0.01 (numprocs, XML-RPC), all EXITED", seconds(theirs))
    for label, elapsed in (
        (f"{CROWD} x twrun -- sleep 0.01, all in history", ours),
        ("  served (TASKWATCHER_SERVER=1), all in history", warm),
    ):
        verdict = "" if theirs is None else f"{elapsed / theirs:.1f}x supervisord"
        if theirs is not None:
            verdict += f"; {target(elapsed <= 3 * theirs, '<= 3x')}"
        show(label, seconds(elapsed), verdict)
    for tool in ("tsp", "nq"):
        if shutil.which(tool) is None:
            show(f"{tool}", "", "not installed")


def until_recorded(db: Path, start: Callable[[dict[str, str]], list[Popen]]) -> float:
    """Seconds from `start(env)` until CROWD tasks are in the history of `db`, or until the
    commands that failed (a crowd this size may outwait the busy timeout) leave no more to
    come; those are said."""
    started = time.perf_counter()
    processes = start({**os.environ, "TASKWATCHER_DB": str(db)})

    def failed() -> int:
        return sum(1 for process in processes if process.poll() not in (None, 0))

    wait_until(lambda: finished_count(db) + failed() >= CROWD, 300)
    elapsed = time.perf_counter() - started
    for process in processes:
        process.wait()
    if failed():
        print(f"  ({failed()} of {CROWD} commands failed: their tasks never ran)")
    return elapsed


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def make_connection(self, host: str) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("localhost")
        connection.sock = socket.socket(socket.AF_UNIX)
        connection.sock.connect(str(self.path))
        return connection


def supervisord_crowd(supervisor_bin: Path, folder: Path) -> float:
    """Seconds from startProcessGroup until every process of the group has EXITED."""
    sock = folder / "supervisor.sock"
    config = folder / "supervisord.conf"
    config.write_text(
        f"[unix_http_server]\nfile={sock}\n\n[supervisord]\nlogfile={folder}/supervisord.log\n"
        f"pidfile={folder}/supervisord.pid\nnodaemon=true\nminfds=4096\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[program:sleeper]\ncommand=sleep 0.01\nnumprocs={CROWD}\n"
        "process_name=%(program_name)s_%(process_num)03d\nautostart=false\n"
        "autorestart=false\nstartsecs=0\nstdout_logfile=NONE\nstderr_logfile=NONE\n"
    )
    daemon = subprocess.Popen(
        [supervisor_bin / "supervisord", "-c", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(sock.exists, 30)
        rpc = xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(sock))
        wait_until(lambda: rpc.supervisor.getState()["statename"] == "RUNNING", 30)
        started = time.perf_counter()
        rpc.supervisor.startProcessGroup("sleeper", False)
        wait_until(
            lambda: all(p["statename"] == "EXITED" for p in rpc.supervisor.getAllProcessInfo()),
            120,
        )
        return time.perf_counter() - started
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-lean-") as name:
        folder = Path(name)
        started = time.perf_counter()
        bin_ = venv(folder / "venv", str(SOURCE))
        show(f"pip install {SOURCE} into a fresh venv", seconds(time.perf_counter() - started))
        try:
            supervisor_bin: Path | None = venv(folder / "supervisor", "supervisor")
        except subprocess.CalledProcessError:
            supervisor_bin = None
        start_up(bin_, folder)
        import_times(bin_, folder)
        idle_memory(bin_, folder)
        crowd(bin_, supervisor_bin, folder)
