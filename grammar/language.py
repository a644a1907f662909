"""Loads feedback.lark once per process: the parser and the terminals everything else reuses.

Importing lark and loading the grammar costs 30-50 ms, paid by every short-lived command
that reads a feedback file. The terminals Lark compiled are therefore kept in a small JSON
file in the user's cache folder, keyed by the grammar's text and the installed lark; a
missing, stale or unreadable cache just means asking Lark again.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from lark import Lark

GRAMMAR_FILE = "feedback.lark"
START_RULE = "feedback"


@functools.cache
def feedback_parser() -> Lark:
    """Build the LALR parser on first use: importing this module stays cheap."""
    from lark import Lark

    return Lark.open_from_package(__package__, GRAMMAR_FILE, start=START_RULE, parser="lalr")


@functools.cache
def terminal_patterns(*, from_lark: bool = False) -> dict[str, str]:
    """Regular expressions of the grammar's terminals, as Lark compiled them, keyed by name.

    `from_lark` skips the cache file (and rewrites it), for a caller that found it unusable.
    """
    cache = terminal_cache_path()
    cached = None if from_lark or cache is None else _read_patterns(cache)
    if cached is not None:
        return cached
    patterns = {
        terminal.name: terminal.pattern.to_regexp() for terminal in feedback_parser().terminals
    }
    if cache is not None:
        _write_patterns(cache, patterns)
    return patterns


def terminal_cache_path() -> Path | None:
    """Where the compiled terminals are kept; the name changes with the grammar or with lark.

    None without a cache folder (no $XDG_CACHE_HOME and no home folder, as in some
    containers): the terminals then come from Lark each time.
    """
    grammar = Path(__file__).with_name(GRAMMAR_FILE).read_bytes()
    lark_spec = importlib.util.find_spec("lark")
    lark_file = os.stat(lark_spec.origin) if lark_spec and lark_spec.origin else None
    lark_id = f"{lark_spec.origin}:{lark_file.st_size}:{lark_file.st_mtime_ns}" if lark_file else ""
    key = hashlib.sha256(grammar + b"\0" + lark_id.encode()).hexdigest()[:24]
    cache_home = os.environ.get("XDG_CACHE_HOME")
    if not cache_home:
        try:
            cache_home = Path.home() / ".cache"
        except RuntimeError:  # no $HOME and no passwd entry
            return None
    return Path(cache_home) / "taskwatcher" / f"feedback-terminals-{key}.json"


def _read_patterns(path: Path) -> dict[str, str] | None:
    try:
        patterns = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    well_formed = isinstance(patterns, dict) and all(
        isinstance(name, str) and isinstance(regexp, str) for name, regexp in patterns.items()
    )
    return patterns if well_formed and patterns else None


def _write_patterns(path: Path, patterns: dict[str, str]) -> None:
    """Write atomically into a private folder; a cache that cannot be written is no error."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(orjson.dumps(patterns))
        os.replace(partial, path)
    except OSError:
        return
