"""Opening a feedback file without ever blocking on, or reading forever from, a non-file."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from .datatype import datatype
from .errors import NotARegularFile

READ_CHUNK = 1024 * 1024


@datatype(frozen=True)
class OpenedFile:
    """An open regular file: its descriptor, identity (device, inode), size and modification
    time (ns) when opened."""

    descriptor: int
    identity: tuple[int, int]
    size: int
    mtime_ns: int

    def __enter__(self) -> OpenedFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.descriptor)

    def read(self, start: int, stop: int, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The bytes in [start, stop) chunk by chunk; ends early if the file shrank meanwhile."""
        offset = start
        while offset < stop:
            data = os.pread(self.descriptor, min(chunk_size, stop - offset), offset)
            if not data:
                return
            offset += len(data)
            yield data


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> OpenedFile:
    """Open for reading; a FIFO or device opens without blocking and is refused after fstat.

    Without `follow_symlinks`, a symbolic link in the file's place is refused too (a planted
    link must not make a supervisor read another file). Raises OSError (FileNotFoundError,
    PermissionError, ...) or NotARegularFile; callers show `error.strerror or error` after
    the path.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_symlinks:
            raise NotARegularFile("a symbolic link, not read") from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise NotARegularFile("not a regular file")
    except BaseException:
        os.close(descriptor)
        raise
    identity = (status.st_dev, status.st_ino)
    return OpenedFile(descriptor, identity, status.st_size, status.st_mtime_ns)
