"""Helpers for tests that drive the console scripts as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run_cli(
    command: str, *args: str | os.PathLike, timeout: float = 30, **kwargs
) -> subprocess.CompletedProcess[str]:
    """Run an installed console script (twparse, twrun, twctl) the way a user would."""
    return subprocess.run(
        [str(BIN / command), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
