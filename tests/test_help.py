"""Finding one's way: the command list, usage errors that name their subcommand, --version,
and help that speaks plainly and names the real database path."""

from __future__ import annotations

import argparse
import os
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from taskwatcher.cli import twparse, twrun
from taskwatcher.cli.twctl import build_parser
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
#: Wide enough that argparse never wraps a path of tmp_path in the middle.
WIDE = {"COLUMNS": "500"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """twctl's subcommands as its help lists them, in its order, with their parsers."""
    (action,) = [action for action in build_parser()._actions if action.dest == "command"]
    return {listed.dest: action.choices[listed.dest] for listed in action._choices_actions}


def test_twctl_alone_lists_the_commands_as_a_usage_error(isolated_state: Path) -> None:
    result = run_cli("twctl")
    assert result.returncode == 2
    assert result.stdout == ""  # a script's captured output stays empty
    assert result.stderr.startswith("usage: twctl")
    listed = re.findall(r"^    (\w+)", result.stderr, re.MULTILINE)
    assert listed == list(subcommands()) and "completion" in listed
    assert not isolated_state.exists()  # no database was made for it


@pytest.mark.parametrize(
    ("args", "unknown"),
    [
        (["feedback", "12", "--bogus"], "--bogus"),
        (["list", "--pretty"], "--pretty"),  # another subcommand's option
        (["history", "--limit", "3", "extra"], "extra"),
    ],
)
def test_a_subcommand_error_shows_the_subcommand_usage(
    db_path: Path, args: list[str], unknown: str
) -> None:
    result = run_cli("twctl", "--db", db_path, *args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"usage: twctl {args[0]} [-h] [--db PATH]")
    assert lines[-1] == f"twctl {args[0]}: error: unrecognized arguments: {unknown}"
    assert "Traceback" not in result.stderr and not db_path.exists()


@pytest.mark.parametrize("command", ["twctl", "twrun", "twparse"])
def test_version(command: str, isolated_state: Path) -> None:
    result = run_cli(command, "--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{command} {version('taskwatcher')}\n"
    assert not isolated_state.exists()


@pytest.mark.parametrize("command", [["twctl", "clear"], ["twrun"]])
def test_help_names_the_default_database_of_this_user(tmp_path: Path, command: list[str]) -> None:
    state = tmp_path / "100%state"  # argparse formats help with %: this one must survive it
    home = tmp_path / "home"
    by_state = run_cli(*command, "--help", env={**os.environ, **WIDE, "XDG_STATE_HOME": str(state)})
    assert f"else {state}/taskwatcher/tasks.db)" in by_state.stdout
    without = {key: value for key, value in os.environ.items() if key != "XDG_STATE_HOME"}
    by_home = run_cli(*command, "--help", env={**without, **WIDE, "HOME": str(home)})
    assert f"else {home}/.local/state/taskwatcher/tasks.db)" in by_home.stdout
    assert not state.exists() and not home.exists()


def every_parser() -> dict[str, argparse.ArgumentParser]:
    """Every parser whose --help a user can read: the three commands and twctl's subcommands
    (formatted here: printing them all through the commands would take seconds)."""
    parsers = {
        "twctl": build_parser(),
        "twrun": twrun.build_parser(),
        "twparse": twparse.build_parser(),
    }
    parsers.update({f"twctl {name}": parser for name, parser in subcommands().items()})
    return parsers


def test_help_and_readme_speak_without_spec_jargon() -> None:
    texts = {name: parser.format_help() for name, parser in every_parser().items()}
    texts["README.md"] = (ROOT / "README.md").read_text()
    jargon = re.compile(r"\bspec\b|spec's", re.IGNORECASE)
    assert len(texts) > 15 and all(texts.values())
    assert [name for name, text in texts.items() if jargon.search(text)] == []


def test_init_help_example_does_not_force() -> None:
    result = run_cli("twctl", "init", "--help")
    example = result.stdout.split("example:")[1]
    assert "twctl" in example and "init" in example and "--force" not in example
