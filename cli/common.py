"""What every command shares: the --db option, one-line errors, logging, number parsing."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence

from taskwatcher.cli.helpformat import DEFAULT_DB, RawDescriptionHelpFormatter
from taskwatcher.engine import lazylog
from taskwatcher.engine.location import ENV_VAR, named_location, resolve_db_path
from taskwatcher.engine.store import Access, Store
from taskwatcher.engine.store import open_store as open_database

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

#: sqlite's largest INTEGER: a larger number cannot name a task, and sqlite would overflow on it.
MAX_TASK_ID = 2**63 - 1
#: Numbers as users type them: ASCII digits only (`[0-9]`, unlike `\d`, matches no others).
_WHOLE = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?")


def db_help() -> str:
    """--db's help, naming the file this user's commands use by default (DEFAULT_DB, named
    when the help is shown): where that is depends on $XDG_STATE_HOME and the home folder,
    which a pattern leaves to guess."""
    return f"database file, or a postgresql:// URL (default: ${ENV_VAR} if set, else {DEFAULT_DB})"


def add_db_option(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """Add --db; on a subcommand it must not overwrite a --db given before the subcommand."""
    default = argparse.SUPPRESS if inherited else None
    parser.add_argument("--db", type=db_path, metavar="PATH", default=default, help=db_help())


def add_debug_option(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """Add -v/--debug, counted, and the original's -d; on a subcommand it must not reset one
    given before the subcommand, so that it works on either side of it, as --db does."""
    default = argparse.SUPPRESS if inherited else 0
    parser.add_argument(
        "-v", "-d", "--debug", action="count", default=default, help="more logging (-vv: debug)"
    )


def db_path(text: str) -> str:
    """argparse type: a database path; an empty one would silently mean the default."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    return text


def open_store(db_option: str | None, access: Access = Access.CREATE) -> Store:
    """Open the database the options, the environment or the XDG default designate, as the
    command's `access` allows: short of creating it, a named one must exist, while the
    default one may not yet (it then reads as empty)."""
    missing_ok = named_location(db_option) is None
    return open_database(resolve_db_path(db_option), access=access, missing_ok=missing_ok)


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit: the whole error report a user gets."""
    print(message, file=sys.stderr)
    sys.exit(code)


def setup_logging(prog: str, verbosity: int) -> None:
    """Quiet by default (warnings only); -v shows info, -vv debug; always to stderr.

    `logging` itself is imported only when -v asks for records, or for the first warning.
    """

    def setup() -> None:
        from taskwatcher.cli import logsetup

        logsetup.to_stderr(prog, verbosity)

    lazylog.configure(setup, now=verbosity > 0)


def _seconds(text: str) -> float:
    value = decimal(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration above zero."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text!r}")
    return value


def non_negative_seconds(text: str) -> float:
    """argparse type: a duration of zero or more."""
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def task_id(text: str) -> int:
    """argparse type: a task id, checked here so a huge number is a usage error, not a crash."""
    value = _whole(text)
    if value is None or not 1 <= value <= MAX_TASK_ID:
        raise argparse.ArgumentTypeError(f"not a task id (1 to {MAX_TASK_ID}): {text!r}")
    return value


#: Multipliers of the size suffixes `--log-max-bytes` takes, as dd(1) and sort(1) read them.
_SIZE_SUFFIXES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def byte_count(text: str) -> int:
    """argparse type: a size of one byte or more, as `4096`, `64K`, `16M` or `1G`."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size of 1 byte or more (16M, 4096)")
    return int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).upper()]


def count(text: str) -> int:
    """argparse type: a count of zero or more (`--retries 0`: none)."""
    value = _whole(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"not a whole number of 0 or more: {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a count of one or more (`--limit 0` or `-1` would mean nothing useful)."""
    value = _whole(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def decimal(text: str) -> float | None:
    """A number in ASCII digits (`90`, `-1.5`, `2e3`), else None.

    float() and int() also take `٣`, `1_0`, `+3` and spaces around, which on a command line
    are typos, or text meant to look like another number.
    """
    return float(text) if _DECIMAL.fullmatch(text) else None


def _whole(text: str) -> int | None:
    if not _WHOLE.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than int() converts
        return None


class SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: an argument it does not know is its own usage error, shown
    with its usage line (`usage: twctl feedback ...`), not the whole command's."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def subcommand(
    subparsers, name: str, handler, help_text: str, example: str
) -> argparse.ArgumentParser:
    """A twctl subcommand: its help, one example, --db accepted after it, and its handler,
    called as handler(store, args) -> exit status. `subparsers` must make SubcommandParsers."""
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=RawDescriptionHelpFormatter,
    )
    add_db_option(parser, inherited=True)
    add_debug_option(parser, inherited=True)
    parser.set_defaults(handler=handler)
    return parser


def json_flag(parser: argparse.ArgumentParser) -> None:
    """--json: machine-readable output, the same keys in every command."""
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
