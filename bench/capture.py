"""Captured output: how fast twrun moves a task's output to its log, and what a chatty task
costs it.

Throughput: a task writes 200 MB to stdout as fast as it can (`head -c`); twrun (`--output
log`) logs it. Baseline, in the same run: the same bytes through a pipe into `cat > file`.
Both are timed from outside, start-up included; twrun's start-up (`twrun -- true`, timed in
the same run) is taken off before the ratio. Then twrun's own CPU (user + system, from
/proc) while its task prints 10 lines a second for a few seconds, with `--output tee` to
/dev/null, the default path.

Targets: throughput at least 0.5x `cat`'s; the chatty task costs twrun under 1% of a core.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import cpu_share, seconds, show, target

TWRUN = str(Path(sys.executable).parent / "twrun")
FLOOD_BYTES = 200_000_000
RUNS = 5
CHATTY_SECONDS = 6.0
#: Seconds of the chatty task's start not counted: twrun's own start-up and launch.
SETTLE = 1.0
CHATTY = "while true; do echo line; sleep 0.1; done"


def timed(command: list[str], **options: object) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, **options)  # type: ignore[call-overload]
    return time.perf_counter() - started


def throughput(folder: Path) -> None:
    """MB/s through twrun into its log against `cat` into a file, turn by turn."""
    db = folder / "capture.db"
    flood = ["head", "-c", str(FLOOD_BYTES), "/dev/zero"]
    twrun = [TWRUN, "--db", str(db), "--output", "log", "--log-max-bytes", "1G", "--"]
    cat = f"head -c {FLOOD_BYTES} /dev/zero | cat > {folder / 'cat.out'}"
    samples: dict[str, list[float]] = {"cat": [], "twrun": [], "startup": []}
    for _ in range(RUNS):
        samples["cat"].append(timed(["sh", "-c", cat]))
        samples["twrun"].append(timed([*twrun, *flood]))
        samples["startup"].append(timed([*twrun, "true"]))
        for log in (folder / "capture-logs").iterdir():
            log.unlink()
    cat_s, twrun_s, startup_s = (statistics.median(samples[key]) for key in samples)
    moving = max(twrun_s - startup_s, 1e-6)
    cat_rate, twrun_rate = FLOOD_BYTES / cat_s / 1e6, FLOOD_BYTES / moving / 1e6
    show(f"cat > file, {FLOOD_BYTES / 1e6:.0f} MB (baseline, median of {RUNS})",
         f"{cat_rate:.0f} MB/s", seconds(cat_s))  # fmt: skip
    show("twrun --output log, start-up (twrun -- true) taken off", f"{twrun_rate:.0f} MB/s",
         f"{seconds(twrun_s)} - {seconds(startup_s)}")  # fmt: skip
    ratio = twrun_rate / cat_rate
    show("  twrun over cat", f"{ratio:.2f}x", target(ratio >= 0.5, ">= 0.5x"))


def chatty_cpu(folder: Path) -> None:
    """twrun's own CPU while its task prints 10 lines a second, output teed to /dev/null."""
    command = [TWRUN, "--db", str(folder / "chatty.db"), "--", "sh", "-c", CHATTY]
    share = cpu_share(command, SETTLE, CHATTY_SECONDS)
    show(f"twrun's CPU, task printing 10 lines/s for {CHATTY_SECONDS:g} s",
         f"{share * 100:.2f} %", target(share < 0.01, "< 1% of a core"))  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="twbench-capture-") as folder:
        throughput(Path(folder))
        chatty_cpu(Path(folder))


if __name__ == "__main__":
    main()
