"""Making sure a path can hold an sqlite database before sqlite touches it.

sqlite happily turns any path into a database, a device included, and puts its journal beside
it; these checks run first so a wrong path fails with one clear line and leaves the file
untouched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from taskwatcher.engine.errors import StoreError


def prepare_db_file(path: Path) -> None:
    """Create the folder (0700) and an empty file (0600) if missing; refuse what sqlite can't use.

    An existing file is never opened here: closing any descriptor of a database file drops
    every POSIX lock this process holds on it, sqlite's own included, so the header check is
    left to sqlite (`schema.check_usable` reads before anything is written).
    """
    _ensure_folder(path.parent)
    _refuse_foreign_link(path)
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a database file")
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: sqlite would add a journal
        raise StoreError(f"{path}: not a regular file, cannot hold a database")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as error:
        raise StoreError(f"{path}: cannot create the database ({error.strerror})") from None
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path}: database is not readable and writable")


def _refuse_foreign_link(path: Path) -> None:
    """A link another user planted where the database should be is refused: following it,
    a command would turn a file of its target's owner into a database."""
    try:
        status = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(status.st_mode) and status.st_uid not in (os.geteuid(), 0):
        raise StoreError(f"{path}: a symbolic link of another user's (uid {status.st_uid})")


def _ensure_folder(folder: Path) -> None:
    """Create missing folders one level at a time so each new level is private (0700)."""
    missing = [level for level in (folder, *folder.parents) if not level.exists()]
    for level in reversed(missing):
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:
            continue
        except OSError as error:
            raise StoreError(
                f"{level}: cannot create the database folder ({error.strerror})"
            ) from None
    if not folder.is_dir():
        raise StoreError(f"{folder}: not a folder, cannot hold the database")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"{folder}: database folder is not writable")
