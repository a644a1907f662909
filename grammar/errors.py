"""The one exception root of taskwatcher; every package's errors derive from it."""


class TaskwatcherError(Exception):
    """Root of every error taskwatcher raises on purpose; the CLI turns it into one line."""


class InvalidKeyword(TaskwatcherError, ValueError):
    """A keyword the feedback grammar does not accept."""


class InvalidValue(TaskwatcherError, ValueError):
    """A value or comment that cannot be written as one feedback line."""


class InvalidReaderState(TaskwatcherError, ValueError):
    """A saved reader state that cannot be restored."""


class NotARegularFile(TaskwatcherError, OSError):
    """A feedback path that names a FIFO, device or directory instead of a regular file."""
