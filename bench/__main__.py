"""`python -m bench [NAME...]`: run every benchmark (or the named ones) one after the other."""

from __future__ import annotations

import importlib
import sys
import time

SUITES = (
    "grammar",
    "store",
    "journal",
    "twrun",
    "twctl",
    "wait",
    "load",
    "capture",
    "notify",
    "pg",
    "lean",
)


def main(names: list[str]) -> None:
    """Run the chosen suites, each printing its own figures and targets."""
    for name in names or SUITES:
        print(f"\n=== bench {name} ===", flush=True)
        started = time.perf_counter()
        importlib.import_module(f"bench.{name}").main()
        print(f"--- {name} took {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
