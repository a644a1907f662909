"""Whether another user could redirect a path: the rule ssh's StrictModes applies to ~/.ssh.

A folder is only as safe as the way to it: whoever may rename an entry on that way can swap a
folder of their own, or a symbolic link, in its place. So every directory on the way, and the
folder itself, must belong to the caller or root and be writable by nobody else, unless it
has the sticky bit (as /tmp does: there only an entry's owner may rename or remove it, and
every entry is checked to belong to the caller or root). A symbolic link met on the way must
belong to the caller or root too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from taskwatcher.engine.ownership import user_name


def untrusted_part(path: Path) -> str | None:
    """Why another user could redirect `path` (which must exist), or None when nobody can."""
    literal = Path(os.path.abspath(path))
    for depth in range(1, len(literal.parts) + 1):
        part = Path(*literal.parts[:depth])
        status = os.lstat(part)
        if stat.S_ISLNK(status.st_mode) and status.st_uid not in _trusted():
            return f"{part} is a symbolic link of {user_name(status.st_uid)}'s"
    resolved = Path(os.path.realpath(literal))
    for folder in [*reversed(resolved.parents), resolved]:
        if problem := _untrusted_folder(folder):
            return problem
    return None


def _untrusted_folder(folder: Path) -> str | None:
    status = os.stat(folder)
    if status.st_uid not in _trusted():
        return f"{folder} belongs to {user_name(status.st_uid)}"
    if status.st_mode & 0o022 and not status.st_mode & stat.S_ISVTX:
        return f"{folder} is writable by other users (and has no sticky bit)"
    return None


def _trusted() -> tuple[int, int]:
    """The caller and root: the only owners a safe way may have (read at each call)."""
    return (os.geteuid(), 0)
