"""`pip install .` (not editable) in a fresh venv gives working commands from any folder."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("taskwatcher-*.whl")
    return built


def test_wheel_maps_folders_under_taskwatcher(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "taskwatcher/grammar/feedback.lark" in names
    assert "taskwatcher/engine/store.py" in names and "taskwatcher/cli/twctl.py" in names
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith((".dist-info", ".data"))} == {"taskwatcher"}
    # The commands are scripts of their own (the installer sets their interpreter).
    scripts = {name.split("/")[-1] for name in names if name.split("/")[1:2] == ["scripts"]}
    assert scripts == {"twrun", "twctl", "twparse"}


def test_installed_wheel_runs_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # A venv of its own, filled by this pip (`--python`): the same install as a pip inside
    # it would make, without the ten seconds of putting one there first.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "feedback.log").write_text("[info]hello\n[progress]12\n[info]\n")
    parsed = subprocess.run(
        [str(venv / "bin" / "twparse"), "feedback.log"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert parsed.returncode == 0, parsed.stderr
    assert json.loads(parsed.stdout) == {"progress": "12"}
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not {"grammar", "engine", "cli"} & {path.name for path in site.iterdir()}
    for command in ("twrun", "twctl"):
        assert (venv / "bin" / command).exists()
