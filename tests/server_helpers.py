"""Helpers for tests of the command server: its pid, and whether a process still lives."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_cli, wait_for


def server_pid(env: dict[str, str]) -> int:
    """Start the server (the first served command runs itself and starts one) and wait
    until it answers; its pid."""
    assert run_cli("twrun", "--", "true", env=env).returncode == 0
    folder = Path(env["XDG_RUNTIME_DIR"]) / "taskwatcher"
    sockets = wait_for(lambda: list(folder.glob("*.sock")), timeout=15)
    assert len(sockets) == 1
    return int(Path(f"{sockets[0]}.lock").read_text())


def alive(pid: int) -> bool:
    """Whether pid runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
