"""sd_notify: how soon a `WATCHDOG=1` becomes a heartbeat, and what a chatty task costs twrun.

Round trip: a real child process sends `WATCHDOG=1` to a real notify socket, stamping
CLOCK_MONOTONIC (system-wide on Linux) just before sendmsg; the supervisor's own loop and
`Notifications` source (credentials checked against the child, datagram parsed, heartbeat
applied to the health machine) run in this process, which stamps the moment the heartbeat
is applied. Baseline in the same run: the same loop with a source that only reads the
datagram. Then a real twrun whose task sends 100 notifications a second: twrun's CPU.

Targets: round trip under 5 ms (median); twrun under 2% of a core at 100 notifications/s.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.measure import cpu_share, seconds, show, target
from taskwatcher.engine import loop
from taskwatcher.engine.machine import TaskState
from taskwatcher.engine.notify import Notifications, NotifySocket, task_member
from taskwatcher.engine.supervision import Recorder, Supervision

TWRUN = str(Path(sys.executable).parent / "twrun")
PINGS = 50
#: Between two pings: a task pings at a fraction of its timeout, not back to back (a socket
#: woken many times within 0.1 s is read in batches, see engine.notify.NOTIFY_PAUSE).
PING_INTERVAL = 0.1
RATE = 100  # notifications a second, for the CPU figure
CPU_SECONDS = 5.0
SETTLE = 1.0
#: The task: on each line of stdin, stamp the monotonic clock on stdout, then WATCHDOG=1.
PINGER = """\
import os, socket, sys, time
address = os.environ["NOTIFY_SOCKET"].replace("@", "\\0", 1)
client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for _ in sys.stdin:
    sent = time.monotonic()
    client.sendto(b"WATCHDOG=1", address)
    print(sent, flush=True)
"""
CHATTY = f"""\
import os, socket, time
address = os.environ["NOTIFY_SOCKET"].replace("@", "\\0", 1)
client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
while True:
    client.sendto(b"WATCHDOG=1\\nSTATUS=busy", address)
    time.sleep({1 / RATE})
"""


class StampingRecorder(Recorder):
    """The real recorder, which also notes when each heartbeat reached it; it writes nothing
    (its row writes are not part of the round trip, and no row exists here)."""

    def __init__(self, state: Supervision) -> None:
        super().__init__(state)
        self.applied: list[float] = []
        self.heard_one = threading.Event()

    def heard(self, when: float, wall: float) -> None:
        super().heard(when, wall)
        self.applied.append(time.monotonic())
        self.heard_one.set()


class BareReader:
    """The baseline source: reads a datagram and stamps it, nothing else."""

    def __init__(self, notify: NotifySocket, stamp: Callable[[], None]) -> None:
        self._notify, self._stamp = notify, stamp

    def fileno(self) -> int | None:
        return self._notify.fileno()

    def deadline(self, now: float) -> float | None:
        return None

    def handle(self, now: float) -> None:
        for _ in self._notify.receive():
            self._stamp()


def round_trips(
    make_source: Callable[[NotifySocket, subprocess.Popen, Recorder], object],
) -> list[float]:
    """Send PINGS notifications one at a time; seconds from each send to its heartbeat."""
    with NotifySocket() as notify:
        env = {**os.environ, "NOTIFY_SOCKET": notify.address}
        child = subprocess.Popen(
            [sys.executable, "-c", PINGER], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        health = TaskState(1, 10.0)
        health.start(time.monotonic())
        recorder = StampingRecorder(Supervision(health, None, time.time))  # type: ignore[arg-type]
        source = make_source(notify, child, recorder)
        stop = threading.Event()
        worker = threading.Thread(
            target=loop.run, args=([source], stop.is_set, time.monotonic), daemon=True
        )
        worker.start()
        samples = []
        try:
            for _ in range(PINGS):
                time.sleep(PING_INTERVAL)
                recorder.heard_one.clear()
                child.stdin.write("\n")
                sent = float(child.stdout.readline())
                if not recorder.heard_one.wait(5):
                    raise RuntimeError("a notification was never applied")
                samples.append(recorder.applied[-1] - sent)
        finally:
            stop.set()
            child.stdin.close()
            child.wait(timeout=30)
            worker.join(timeout=5)
    return samples


def twrun_source(notify: NotifySocket, child: subprocess.Popen, recorder: Recorder) -> object:
    return Notifications(notify, recorder, task_member(child), beats=True)


def bare_source(notify: NotifySocket, child: subprocess.Popen, recorder: Recorder) -> object:
    return BareReader(notify, lambda: recorder.heard(time.monotonic(), time.time()))


def chatty_cpu(folder: Path) -> float:
    """twrun's CPU share of one core while its task sends RATE notifications a second."""
    command = [TWRUN, "--db", str(folder / "notify.db"), "--timeout", "5", "--output", "log",
               "--", sys.executable, "-c", CHATTY]  # fmt: skip
    return cpu_share(command, SETTLE, CPU_SECONDS)


def main() -> None:
    bare = statistics.median(round_trips(bare_source))
    applied = round_trips(twrun_source)
    median = statistics.median(applied)
    show(f"send -> read by a bare source (baseline, median of {PINGS})", seconds(bare), "1.00x")
    show(
        "send -> heartbeat applied (credentials, parse, health machine)",
        seconds(median),
        f"{median / bare:.2f}x   {target(median < 0.005, '< 5 ms')}",
    )
    show("  worst", seconds(max(applied)))
    with tempfile.TemporaryDirectory(prefix="twbench-notify-") as folder:
        share = chatty_cpu(Path(folder))
    show(
        f"twrun's CPU, task sending {RATE} notifications/s",
        f"{share * 100:.2f} %",
        target(share < 0.02, "< 2% of a core"),
    )


if __name__ == "__main__":
    main()
