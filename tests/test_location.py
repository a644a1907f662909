"""Where the database lives, and how its folder and files are created."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from taskwatcher.engine.errors import StoreError
from taskwatcher.engine.location import default_feedpath, resolve_db_path
from taskwatcher.engine.store import open_store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cli_value_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKWATCHER_DB", str(tmp_path / "env.db"))
    assert resolve_db_path(str(tmp_path / "cli.db")) == tmp_path / "cli.db"


def test_environment_variable_comes_next(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKWATCHER_DB", str(tmp_path / "env.db"))
    assert resolve_db_path(None) == tmp_path / "env.db"


def test_xdg_state_home_is_the_default(isolated_state):
    assert resolve_db_path(None) == isolated_state / "taskwatcher" / "tasks.db"


def test_without_xdg_state_home_the_default_is_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_db_path(None) == tmp_path / ".local" / "state" / "taskwatcher" / "tasks.db"


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_db_path("~/x.db") == tmp_path / "x.db"


def test_feedback_folder_sits_beside_the_database(tmp_path):
    assert default_feedpath(tmp_path / "tasks.db") == tmp_path / "tasks-feedback"


def test_first_use_creates_a_private_folder_and_file(isolated_state):
    path = resolve_db_path(None)
    with open_store(path) as store:
        store.reserve("x")
    assert mode(path.parent) == 0o700
    assert mode(isolated_state) == 0o700
    assert mode(path) == 0o600


def test_the_journal_is_private(db_path):
    with open_store(db_path) as store:
        store.reserve("x")
        journal = Path(f"{db_path}-journal")  # kept, empty, between transactions (TRUNCATE)
        assert journal.exists()
        assert mode(journal) & 0o077 == 0


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_is_refused_before_sqlite_touches_it(device):
    with pytest.raises(StoreError, match="not a regular file"):
        open_store(device)
    assert not Path(f"{device}-journal").exists()


def test_explicit_path_in_missing_folders_creates_them_private(tmp_path):
    path = tmp_path / "a" / "b" / "tasks.db"
    open_store(path).close()
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700
    assert mode(path) == 0o600


def test_existing_file_keeps_its_mode(db_path):
    db_path.touch(mode=0o640)
    db_path.chmod(0o640)
    open_store(db_path).close()
    assert mode(db_path) == 0o640


def test_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StoreError, match="cannot create the database folder"):
        open_store(tmp_path / "plain" / "sub" / "tasks.db")


def test_a_folder_is_not_a_database(tmp_path):
    with pytest.raises(StoreError, match="is a folder"):
        open_store(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(StoreError, match="locked"):
            open_store(folder / "tasks.db")
    finally:
        folder.chmod(0o700)
