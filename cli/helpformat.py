"""What every command's parser shares, at no cost to a command that only runs: formatters
that find the terminal's width without importing shutil, and a --version that looks the
version up only when asked.

argparse builds a formatter for every option it adds, and each one asks shutil for the
width: shutil's import (archives, compression) costs every command milliseconds it needs
only to print help.
"""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The distribution whose installed metadata holds the version.
DISTRIBUTION = "taskwatcher"


#: Stands, in a help text, for the database this user's commands use by default; named when
#: the help is shown, from the environment then ($XDG_STATE_HOME, the home folder), not the
#: one the parser was built in (the command server builds it once for all its workers).
DEFAULT_DB = "{default database}"


class _TerminalWidth:
    """The width as shutil.get_terminal_size finds it, unless one is given; DEFAULT_DB
    named as the help is shown."""

    def __init__(self, prog: str, **options: Any) -> None:
        options.setdefault("width", _terminal_columns() - 2)
        super().__init__(prog, **options)  # type: ignore[call-arg]

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action)  # type: ignore[misc]
        if DEFAULT_DB in text:
            text = text.replace(DEFAULT_DB, _default_db().replace("%", "%%"))  # argparse's %
        return text


def _default_db() -> str:
    from taskwatcher.engine.errors import StoreError
    from taskwatcher.engine.location import default_db_path

    try:
        return str(default_db_path())
    except StoreError:  # no home folder: nothing to name
        return "$XDG_STATE_HOME/taskwatcher/tasks.db"


class HelpFormatter(_TerminalWidth, argparse.HelpFormatter):
    """argparse's default formatter."""


class RawDescriptionHelpFormatter(_TerminalWidth, argparse.RawDescriptionHelpFormatter):
    """argparse's formatter that keeps descriptions and epilogs as written."""


def _terminal_columns() -> int:
    """$COLUMNS, else the width of the terminal behind stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _VersionAction(argparse.Action):
    """`--version`: print `PROG VERSION` and exit 0, like argparse's own, but the version is
    read only when the option is given."""

    def __init__(self, option_strings: list[str], dest: str, **options: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **options)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog} {installed_version()}")
        parser.exit()


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """Add --version to a command's parser."""
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")


def installed_version() -> str:
    """The installed version, from the `.dist-info` folder pip left on sys.path.

    importlib.metadata finds the same file but costs some 80 ms to import (email, zipfile,
    csv): more than the rest of the command. Any other layout (an egg, a zip) is left to it.
    """
    prefix = f"{DISTRIBUTION}-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or os.curdir)
        except OSError:  # a zip, or a folder gone
            continue
        for name in names:
            if name.startswith(prefix) and name.endswith(".dist-info"):
                version = _metadata_version(os.path.join(entry, name, "METADATA"))
                if version:
                    return version
    from importlib.metadata import version

    return version(DISTRIBUTION)


def _metadata_version(path: str) -> str | None:
    """The `Version:` header of a METADATA file (headers come before the first blank line)."""
    try:
        with open(path, encoding="utf-8") as metadata:
            for line in metadata:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                if key == "Version":
                    return value.strip()
    except OSError:
        pass
    return None
