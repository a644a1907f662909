"""The one exception root of taskwatcher; every package's errors derive from it."""


class TaskwatcherError(Exception):
    """Root of every error taskwatcher raises on purpose; the CLI turns it into one line."""
