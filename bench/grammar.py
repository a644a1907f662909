"""Feedback parsing speed and memory, against a naive regex loop measured in the same run.

Targets: our parser at most 0.7x the naive loop on a 1M-line file; twparse's peak RSS on
1M lines within 25 MB of that on 1k lines (it streams), on 1M distinct keys within 50 MB (it
holds 10,000 keys, and one chunk's while applying it; all of them took 230 MB); one
FeedbackReader.poll() after an append under 2 ms; the first poll of a 1 TiB sparse file
under 1 s (it reads the last 16 MiB); twparse start-up on a 1-line file under 150 ms.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from bench.measure import median_of, seconds, show, target, write_feedback
from taskwatcher.grammar import FeedbackReader, ReaderState
from taskwatcher.grammar.files import open_regular
from taskwatcher.grammar.reference import parse_with_lark
from taskwatcher.grammar.stream import FeedbackStream

BIG_LINES = 1_000_000
DISTINCT_KEYS = 1_000_000
SMALL_LINES = 1_000
LARK_LINES = 100_000  # pure Lark is timed on this many lines and scaled linearly
TWPARSE = Path(sys.executable).parent / "twparse"
NAIVE_ENTRY = r"^\[([^\]]*)\](.*)$"


def naive_loop(path: Path) -> dict[str, str]:
    """What one writes first: strip each line, re.search it, update a dict."""
    values: dict[str, str] = {}
    with open(path, encoding="utf-8") as file:
        for line in file:
            line = line.strip()
            found = re.search(NAIVE_ENTRY, line)
            if found:
                keyword, value = found.groups()
                if not keyword:
                    values.clear()
                elif value:
                    values[keyword] = value
                else:
                    values.pop(keyword, None)
    return values


def ours(path: Path) -> dict[str, str]:
    """What twparse does: stream the file in chunks through the fast path."""
    stream = FeedbackStream()
    with open_regular(path) as opened:
        for chunk in opened.read(0, opened.size):
            stream.feed(chunk)
    stream.finish()
    return stream.current()


def best_of(action: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of a few runs: the figure least disturbed by the rest of the machine."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return min(samples)


def peak_rss_mib(command: list[str]) -> float:
    """Peak resident memory of a command, in MiB.

    Measured from a small intermediate interpreter: a child's ru_maxrss starts from the
    memory of the process it was forked from, and this benchmark's own process is large.
    """
    probe = (
        "import resource, subprocess, sys;"
        "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True
    )
    return int(result.stdout) / 1024  # Linux reports KiB


def parse_speed(big: Path) -> None:
    """One 1M-line file through each parser, as ratios to the naive loop."""
    ours(big.with_name("one.log"))  # the grammar loads once per process: not part of the figure
    same = ours(big) == naive_loop(big)
    naive = best_of(lambda: naive_loop(big))
    show(f"naive regex loop, {BIG_LINES:,} lines (baseline)", seconds(naive), "1.00x")
    mine = best_of(lambda: ours(big))
    show(
        "our parser (chunked fast path), same file",
        seconds(mine),
        f"{mine / naive:.2f}x   {target(mine <= 0.7 * naive, '<= 0.70x')}",
    )
    show("  same values as the naive loop", "yes" if same else "NO")
    with open(big) as file:
        lark_text = "".join(islice(file, LARK_LINES))
    lark = best_of(lambda: parse_with_lark(lark_text), repeats=1) * BIG_LINES / LARK_LINES
    show(
        f"pure Lark, timed on {LARK_LINES:,} lines x {BIG_LINES // LARK_LINES}",
        seconds(lark),
        f"{lark / naive:.2f}x",
    )
    floor = best_of(lambda: subprocess.run(["wc", "-l", str(big)], capture_output=True))
    show("wc -l (floor)", seconds(floor), f"{floor / naive:.2f}x")


def memory(small: Path, big: Path, distinct: Path) -> None:
    """Peak RSS above a small file's: a long file streams; a file of distinct keys is held
    to 10,000 of them, plus the keys of the one 1 MiB chunk being applied."""
    small_rss = peak_rss_mib([str(TWPARSE), str(small)])
    show(f"twparse peak RSS, {SMALL_LINES:,} lines", f"{small_rss:.1f} MiB")
    for label, path, most in (
        (f"{BIG_LINES:,} lines", big, 25),
        (f"{DISTINCT_KEYS:,} distinct keys", distinct, 50),
    ):
        rss = peak_rss_mib([str(TWPARSE), str(path)])
        show(
            f"twparse peak RSS, {label}",
            f"{rss:.1f} MiB",
            f"+{rss - small_rss:.1f} MiB   {target(rss - small_rss <= most, f'<= +{most} MB')}",
        )


def sparse_terabyte(sparse: Path) -> None:
    """A file that grew by a terabyte of holes costs a poll its byte budget, not the terabyte."""
    sparse.touch()
    os.truncate(sparse, 1024**4)
    with open(sparse, "a") as file:
        file.write("\n[progress]100\n")
    started = time.perf_counter()
    FeedbackReader(sparse).poll(final=True)
    poll = time.perf_counter() - started
    show(
        "first FeedbackReader.poll() of a 1 TiB sparse file",
        seconds(poll),
        target(poll < 1, "< 1 s"),
    )


def incremental_poll(big: Path) -> None:
    """A live task appends a line; a supervisor (same process) or twctl (saved state) polls."""
    reader = FeedbackReader(big)
    reader.poll()
    line = iter(range(10**9))

    def append_and_poll() -> None:
        with open(big, "a") as file:
            file.write(f"[progress]{next(line)}\n")
        reader.poll()

    poll = median_of(append_and_poll, 200)
    show(
        f"FeedbackReader.poll() after a 1-line append, {BIG_LINES // 10**6}M-line file",
        seconds(poll),
        target(poll < 2e-3, "< 2 ms"),
    )
    saved = reader.state.to_json()

    def resume_and_poll() -> None:
        with open(big, "a") as file:
            file.write(f"[progress]{next(line)}\n")
        FeedbackReader(big, state=ReaderState.from_json(saved)).poll()

    resumed = median_of(resume_and_poll, 200)
    show("  same, resumed from a saved state (as twctl feedback)", seconds(resumed))


def start_up(one_line: Path) -> None:
    def run(command: list[str]) -> Callable[[], object]:
        return lambda: subprocess.run(command, capture_output=True, check=True)

    bare = median_of(run([sys.executable, "-c", "pass"]), 15)
    show("python -c pass (baseline)", seconds(bare))
    twparse = median_of(run([str(TWPARSE), str(one_line)]), 15)
    show(
        "twparse start-up, 1-line file (median of 15)",
        seconds(twparse),
        f"{twparse / bare:.1f}x   {target(twparse < 0.150, '< 150 ms')}",
    )


def main() -> None:
    """Generate the files, then print every figure with its target."""
    with tempfile.TemporaryDirectory(prefix="twbench-grammar-") as folder:
        big = Path(folder) / "big.log"
        small = Path(folder) / "small.log"
        one_line = Path(folder) / "one.log"
        distinct = Path(folder) / "distinct.log"
        write_feedback(big, BIG_LINES)
        write_feedback(small, SMALL_LINES)
        distinct.write_text("".join(map("[key{}]value\n".format, range(DISTINCT_KEYS))))
        one_line.write_text("[progress]1\n")
        show("feedback file", f"{big.stat().st_size / 2**20:.1f} MiB", f"{BIG_LINES:,} lines")
        parse_speed(big)
        memory(small, big, distinct)
        start_up(one_line)
        incremental_poll(big)
        sparse_terabyte(Path(folder) / "sparse.log")


if __name__ == "__main__":
    main()
