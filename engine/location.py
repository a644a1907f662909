"""Where the database lives by default, and the folders kept beside it (or, for a database
on a server, in this host's state folder).

A location is a path (an sqlite file) or a `postgresql://` URL; nothing else in the engine
tells the two apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from taskwatcher.engine.errors import InvalidRequest, StoreError

ENV_VAR = "TASKWATCHER_DB"


#: libpq's key=value connection strings: taken for a file name, one would create an sqlite
#: file named after the password it may hold.
_CONNINFO = re.compile(r"\s*(host|hostaddr|dbname|user|password|port|service)\s*=")

#: What a location starts with when it names a PostgreSQL database.
URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether a location names a database on a server rather than a file."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def state_folder() -> Path:
    """This host's `${XDG_STATE_HOME:-~/.local/state}/taskwatcher`."""
    state_home = os.environ.get("XDG_STATE_HOME")
    if not state_home:
        try:
            state_home = str(Path.home() / ".local" / "state")
        except RuntimeError:  # no $HOME and no passwd entry, as in some containers
            raise StoreError(
                f"no home folder for the default database: name one in ${ENV_VAR}"
            ) from None
    return Path(state_home) / "taskwatcher"


def default_db_path() -> Path:
    """The XDG state location used when neither --db nor $TASKWATCHER_DB is given."""
    return state_folder() / "tasks.db"


def named_location(cli_value: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """The location the user named, --db before $TASKWATCHER_DB; None leaves the default.

    A named one that is missing is a typo for a command that does not create databases; the
    default one, missing, has not been used yet.
    """
    return cli_value or os.environ.get(ENV_VAR) or None


def resolve_db_path(cli_value: str | os.PathLike[str] | None) -> Path | str:
    """--db wins, then $TASKWATCHER_DB, then the XDG state path (DESIGN.md order); a URL is
    kept as it is."""
    chosen = named_location(cli_value)
    if chosen and is_url(str(chosen)):
        return str(chosen)
    if chosen and _CONNINFO.match(str(chosen)):
        raise InvalidRequest(
            "a database location that reads like libpq's key=value form: write it as a"
            " postgresql:// URL (a path was meant? give it as ./... )"
        )
    return Path(chosen).expanduser() if chosen else default_db_path()


def default_feedpath(location: str | os.PathLike[str], *, on_server: bool = False) -> Path:
    """Feedback files go beside the database, so one --db keeps a whole setup together; with
    a database on a server (`on_server`), in this host's state folder."""
    if on_server:
        return state_folder() / "feedback"
    path = Path(location)
    return path.parent / f"{path.stem}-feedback"


def default_logdir(location: str | os.PathLike[str], *, on_server: bool = False) -> Path:
    """Task logs go beside the database too, in a folder of their own (see default_feedpath)."""
    if on_server:
        return state_folder() / "logs"
    path = Path(location)
    return path.parent / f"{path.stem}-logs"
