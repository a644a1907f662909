"""Where the database lives by default, and the folders kept beside it.

Nothing else in the engine knows a database can be a file: that is the sqlite backend's.
"""

from __future__ import annotations

import os
from pathlib import Path

from taskwatcher.engine.errors import StoreError

ENV_VAR = "TASKWATCHER_DB"


def default_db_path() -> Path:
    """The XDG state location used when neither --db nor $TASKWATCHER_DB is given."""
    state_home = os.environ.get("XDG_STATE_HOME")
    if not state_home:
        try:
            state_home = Path.home() / ".local" / "state"
        except RuntimeError:  # no $HOME and no passwd entry, as in some containers
            raise StoreError(
                f"no home folder for the default database: name one in ${ENV_VAR}"
            ) from None
    return Path(state_home) / "taskwatcher" / "tasks.db"


def resolve_db_path(cli_value: str | os.PathLike[str] | None) -> Path:
    """--db wins, then $TASKWATCHER_DB, then the XDG state path (DESIGN.md order)."""
    chosen = cli_value or os.environ.get(ENV_VAR)
    return Path(chosen).expanduser() if chosen else default_db_path()


def default_feedpath(location: str | os.PathLike[str]) -> Path:
    """Feedback files go beside the database, so one --db keeps a whole setup together."""
    path = Path(location)
    return path.parent / f"{path.stem}-feedback"


def default_logdir(location: str | os.PathLike[str]) -> Path:
    """Task logs go beside the database too, in a folder of their own."""
    path = Path(location)
    return path.parent / f"{path.stem}-logs"
