"""Shell completion as a shell runs it: bash calling the generated function with the words
of a command line, zsh completing on a real terminal, task ids from a real database."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taskwatcher.engine.lifecycle import LIVE_STATUSES
from taskwatcher.engine.store import open_store
from tests.helpers import BIN, run_cli, wait_for
from tests.tmux_helpers import Tmux, needs_tmux

TWCTL = str(BIN / "twctl")
#: What the twctl console script runs.
CONSOLE_SCRIPT = "import sys; from taskwatcher.cli.twctl import main; sys.exit(main())"
needs_zsh = pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = run_cli("twctl", "completion", "bash")
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("completion") / "twctl.bash"
    path.write_text(result.stdout)
    return path


def bash_completes(script: Path, *words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash offers for the last word of `twctl WORDS...`, as it would on Tab."""
    program = f"""
        source {shlex.quote(str(script))}
        COMP_WORDS=({shlex.join([TWCTL, *words])}) COMP_CWORD={len(words)}
        _twctl
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    result = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, env=env
    )
    assert (result.returncode, result.stderr) == (0, "")
    return [line for line in result.stdout.splitlines() if line]


def live_and_ended(db: Path) -> list[str]:
    """Three reserved tasks, the second cancelled: live are 1 and 3."""
    with open_store(db) as store:
        for name in ("first", "second", "third"):
            store.reserve(name)
        store.cancel_reservation(2, "test")
    return ["1", "3"]


def test_bash_completes_the_commands(bash_script: Path) -> None:
    commands = bash_completes(bash_script, "")
    assert {"list", "history", "kill", "follow", "wait", "completion"} <= set(commands)
    assert "--list" not in commands  # the 1.x flags are left out: they are no commands
    assert bash_completes(bash_script, "fol") == ["follow"]
    assert bash_completes(bash_script, "--db", "x.db", "hi") == ["history"]


def test_bash_completes_a_commands_own_options_and_their_choices(bash_script: Path) -> None:
    options = bash_completes(bash_script, "history", "--")
    assert {"--outcome", "--since", "--limit", "--all", "--json", "--db", "--help"} <= set(options)
    assert "--pretty" not in options  # feedback's, not history's
    assert "--task-ids" not in bash_completes(bash_script, "completion", "--")  # hidden
    assert set(bash_completes(bash_script, "clear", "-")) >= {"-y", "--yes", "--before"}
    live = {status.value for status in LIVE_STATUSES}
    assert set(bash_completes(bash_script, "list", "--status", "")) == live
    assert bash_completes(bash_script, "history", "--outcome", "=", "TI") == ["TIMEOUT"]
    assert bash_completes(bash_script, "kill", "--wait", "") == []  # seconds: nothing to offer


def test_bash_completes_paths_for_db(bash_script: Path, db_path: Path) -> None:
    db_path.write_bytes(b"")
    assert bash_completes(bash_script, "list", "--db", str(db_path)[:-4]) == [str(db_path)]


def test_bash_completes_live_task_ids(bash_script: Path, db_path: Path) -> None:
    live = live_and_ended(db_path)
    assert bash_completes(bash_script, "--db", str(db_path), "kill", "") == live
    assert bash_completes(bash_script, "show", "--db", str(db_path), "") == live
    assert bash_completes(bash_script, "wait", "--db", str(db_path), "1", "3") == ["3"]
    from_environment = {**os.environ, "TASKWATCHER_DB": str(db_path)}
    assert bash_completes(bash_script, "follow", "", env=from_environment) == live


def test_task_ids_never_create_a_database_nor_complain(
    bash_script: Path, tmp_path: Path, isolated_state: Path
) -> None:
    missing = tmp_path / "missing.db"
    assert bash_completes(bash_script, "--db", str(missing), "kill", "") == []
    assert bash_completes(bash_script, "kill", "") == []  # the default database, absent
    assert not missing.exists() and not isolated_state.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n" * 100)
    result = run_cli("twctl", "--db", garbage, "completion", "bash", "--task-ids")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert garbage.read_bytes() == b"not a database\n" * 100


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = run_cli("twctl", "completion", "fish")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: twctl completion")
    assert "invalid choice: 'fish'" in result.stderr


@pytest.mark.parametrize(
    ("command", "imports_it"), [(["list"], False), (["completion", "bash"], True)]
)
def test_only_the_completion_command_imports_completion(
    empty_db: Path, command: list[str], imports_it: bool
) -> None:
    """Every command pays for what it imports: the completion code is for one of them."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", CONSOLE_SCRIPT, "--db", str(empty_db), *command],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "taskwatcher.cli.twctl" in imported  # the import times were read
    assert ("taskwatcher.cli.completion" in imported) is imports_it


@needs_zsh
def test_zsh_script_is_valid_zsh(tmp_path: Path) -> None:
    script = tmp_path / "_twctl"
    script.write_text(run_cli("twctl", "completion", "zsh").stdout)
    result = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")


@needs_zsh
@needs_tmux
def test_zsh_completes_on_a_terminal(tmp_path: Path, db_path: Path) -> None:
    live_and_ended(db_path)  # live: 1 and 3
    setup = f"autoload -U compinit && compinit -u -d {tmp_path}/zcompdump"
    with Tmux(tmp_path / "tmux.sock", "zsh") as tmux:
        tmux.start(f"env PATH={shlex.quote(str(BIN))}:$PATH zsh -f", width=250)
        tmux.keys(f"{setup} && source <(twctl completion zsh) && echo READY", "Enter")
        wait_for(lambda: "\nREADY" in tmux.screen())
        for typed, completed in (
            ("twctl fol", "twctl follow"),
            ("twctl history --outcome TIM", "twctl history --outcome TIMEOUT"),
            ("twctl completion z", "twctl completion zsh"),
        ):
            tmux.keys("C-u", typed, "Tab")
            wait_for(lambda: tmux.screen().rstrip().endswith(completed))  # noqa: B023
        tmux.keys("C-u", f"twctl --db {db_path} show ", "Tab")
        wait_for(lambda: "\n1  3" in tmux.screen())  # the live ids listed, not the ended 2
