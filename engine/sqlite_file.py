"""Making sure a path can hold an sqlite database before sqlite touches it.

sqlite happily turns any path into a database, a device included, and puts its journal beside
it; these checks run first so a wrong path fails with one clear line and leaves the file
untouched. Only a command that may be a database's first user creates one (`prepare_db_file`);
the others open what is there (`existing_db_file`), so that a typo creates nothing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from taskwatcher.engine.errors import NoDatabase, StoreError


def prepare_db_file(path: Path) -> None:
    """Create the folder (0700) and an empty file (0600) if missing; refuse what sqlite can't use.

    An existing file is never opened here: closing any descriptor of a database file drops
    every POSIX lock this process holds on it, sqlite's own included, so the header check is
    left to sqlite (`schema.check_usable` reads before anything is written).
    """
    _ensure_folder(path.parent)
    _check_folder(path.parent)
    _refuse_unusable(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as error:
        raise StoreError(f"{path}: cannot create the database ({error.strerror})") from None
    _check_file(path)


def existing_db_file(path: Path) -> None:
    """Refuse what sqlite can't use, creating nothing; NoDatabase when nothing is there."""
    _refuse_unusable(path)
    if not path.exists():
        raise NoDatabase(f"no taskwatcher database at {path}")
    if not os.access(path, os.R_OK):
        raise StoreError(f"{path}: database is not readable")


def check_writable(path: Path) -> None:
    """StoreError unless the database and its folder, where sqlite puts its journal, can be
    written."""
    _check_folder(path.parent)
    _check_file(path)


def read_only_reason(path: Path) -> str | None:
    """Why the existing database at `path` cannot be written here, or None when it can.

    Writing needs the file, its folder (the journal is made there) and a block free for the
    journal: without one a reader opens it read-only instead of failing on its first write.
    """
    device = os.statvfs(path)
    if device.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if device.f_bavail == 0:
        return "no space left on the device"
    if not os.access(path, os.W_OK):
        return "the file is not writable"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return "its folder is not writable"
    return None


#: The bytes of a path that stay as they are in an sqlite URI; any other is %-escaped, so
#: that `?`, `#`, `%` and bytes that are not UTF-8 name the file and nothing else.
_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/-._~")


def file_uri(path: Path, mode: str) -> str:
    """The `file:` URI opening the absolute `path` in sqlite's `mode` (`ro`, `rw`): unlike a
    plain name, it cannot create the file."""
    escaped = "".join(
        chr(byte) if byte in _URI_SAFE else f"%{byte:02X}" for byte in os.fsencode(path)
    )
    return f"file://{escaped}?mode={mode}"


def _refuse_unusable(path: Path) -> None:
    """A folder, a device or a FIFO (sqlite would add a journal beside it), or another user's
    link, is refused."""
    _refuse_foreign_link(path)
    if path.is_dir():
        raise StoreError(f"{path}: is a folder, not a database file")
    if path.exists() and not path.is_file():
        raise StoreError(f"{path}: not a regular file, cannot hold a database")


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


def _check_file(path: Path) -> None:
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path}: database is not readable and writable")


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise StoreError(f"{folder}: not a folder, cannot hold the database")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"{folder}: database folder is not writable")
