"""A real terminal for tests: a private tmux server, whose screen a test reads."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Tmux:
    """One private tmux server (its own socket) with one session; killed on leaving."""

    def __init__(self, socket: Path, session: str) -> None:
        self.base = ["tmux", "-S", str(socket)]
        self.session = session

    def __enter__(self) -> Tmux:
        return self

    def __exit__(self, *exc_info: object) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10)

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def start(self, shell_command: str, width: int = 150, height: int = 30) -> None:
        """Run a shell command in the session, on a terminal of that size."""
        self("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
             shell_command)  # fmt: skip

    def keys(self, *keys: str) -> None:
        """Type keys (tmux names: `Enter`, `C-c`) into the session."""
        self("send-keys", "-t", self.session, *keys)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", self.session)
