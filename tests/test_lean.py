"""A supervisor stays lean: what twrun holds after a task's whole life, read from its own dump.

A supervisor lives as long as its task; what it imports it carries for hours. The terminal
UI (rich), the grammar's parser generator (lark, for diagnostics only), the diagram code,
and the references the engine is tested against (psutil, transitions) must never be among
them on the common path: a task that reports feedback, writes output and notifies.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from taskwatcher.engine.sources import SETTLE_SECONDS, FreeMemory
from tests.helpers import SPEC_EXAMPLE, run_cli
from tests.run_helpers import PY, history, script
from tests.server_helpers import alive, server_pid

#: Never in a supervisor: (module, why it would be there).
HEAVY = ("rich", "lark", "taskwatcher.engine.diagram", "psutil", "transitions", "logging")
#: Nor in one run in its own process, where importing them is a fifth of its start (orjson
#: brings dataclasses, which brings inspect; hashlib loads OpenSSL; typing is some 3 ms for
#: annotations alone, socket 1.5 ms of enums); a served one shares the server's, which twctl
#: needs.
SLOW_TO_IMPORT = (
    "orjson",
    "dataclasses",
    "inspect",
    "uuid",
    "hashlib",
    "_hashlib",
    "typing",
    "socket",
)

TASK = """\
    import os, socket, sys, time
    feedback = os.environ["TASKWATCHER_FEEDBACK"]
    for line in sys.argv[1].splitlines(keepends=True):
        with open(feedback, "a") as out:
            out.write(line)
        print("working", flush=True)
        time.sleep(0.01)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto(b"READY=1\\nWATCHDOG=1\\nSTATUS=done", os.environ["NOTIFY_SOCKET"])
    time.sleep(0.3)  # a few of the supervisor's looks at feedback, output and its row
"""


def supervised_modules(tmp_path: Path, *twrun_options: str, env: dict[str, str]) -> set[str]:
    dump = tmp_path / "modules"
    task = script(tmp_path, "task.py", TASK)
    db = tmp_path / "tasks.db"
    result = run_cli(
        "twrun", "--db", db, "--timeout", "3", "--heartbeat", "feedback,output,notify",
        *twrun_options, "--", PY, task, SPEC_EXAMPLE,
        env={**env, "TASKWATCHER_DUMP_MODULES": str(dump)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert history(db, 1).feedback["progress"] == "10"  # the feedback was read, for real
    return set(dump.read_text().split())


@pytest.mark.parametrize("output", ["tee", "log"])
def test_a_supervisor_never_holds_the_ui_the_parser_generator_or_the_references(
    tmp_path: Path, output: str
) -> None:
    modules = supervised_modules(tmp_path, "--output", output, env=dict(os.environ))
    assert_lean(modules, HEAVY + SLOW_TO_IMPORT)


def test_a_supervisor_forked_by_the_command_server_is_as_lean(
    tmp_path: Path, served: dict[str, str]
) -> None:
    server = server_pid(served)
    modules = supervised_modules(tmp_path, "--output", "tee", env=served)
    assert "taskwatcher.cli.twctl" in modules  # forked by the server, which imported it
    assert_lean(modules, HEAVY)
    assert alive(server)


def assert_lean(modules: set[str], heavy: tuple[str, ...]) -> None:
    assert "taskwatcher.engine.supervisor" in modules and "sqlite3" in modules
    held = sorted(name for name in modules if name.split(".")[0] in heavy or name in heavy)
    assert held == []


TWCTL_MODULES = """\
import sys
from taskwatcher.cli.twctl import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.stderr.write(" ".join(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    "twctl_args", [["reserve"], ["history", "--limit", "5"], ["list", "--json"], ["feedback", "1"]]
)
def test_twctl_imports_no_orjson_for_a_short_output(tmp_path: Path, twctl_args: list[str]) -> None:
    """orjson (with dataclasses and inspect, a fifth of a command's start) comes only with a
    long JSON stream (test_json_output); typing never comes, nor what only launching needs
    (subprocess with threading and locale, ctypes), nor socket's enums."""
    db = tmp_path / "tasks.db"
    run_cli("twctl", "--db", db, "reserve")
    ran = subprocess.run(
        [PY, "-c", TWCTL_MODULES, "--db", str(db), *twctl_args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    modules = set(ran.stderr.split())
    assert "taskwatcher.cli.twctl" in modules and "taskwatcher.engine.store" in modules
    slow = {"orjson", "dataclasses", "inspect", "typing", "subprocess", "threading", "ctypes"}
    slow |= {"socket", "selectors"}
    assert not slow & modules


@pytest.mark.parametrize("command", ["twrun", "twctl", "twparse"])
def test_help_still_fits_the_terminal_width(command: str) -> None:
    """The width comes from $COLUMNS (or the terminal), as shutil would find it: the usage
    lines wrap to it (the examples are kept as written)."""

    def usage(columns: int) -> list[str]:
        result = run_cli(command, "--help", env={**os.environ, "COLUMNS": str(columns)})
        assert result.returncode == 0, result.stderr
        return result.stdout.split("\n\n")[0].splitlines()

    narrow, wide = usage(45), usage(200)
    assert max(map(len, narrow)) <= 45 and max(map(len, wide)) <= 200
    assert len(narrow) > len(wide)


#: What a served command's caller may hold beyond a bare interpreter's modules: the package's
#: entry point and the built-in modules it speaks to the server with.
CALLER_EXTRA = {"taskwatcher", "taskwatcher.cli", "taskwatcher.cli.start", "_socket", "marshal"}
CALLER_EXTRA |= {"zlib", "_locale"}  # the server's name (a checksum); the locale's encoding


def test_a_served_commands_caller_holds_little_more_than_a_bare_interpreter(
    tmp_path: Path, served: dict[str, str]
) -> None:
    """The caller only waits for its worker: every module it imports (`re` in an entry-point
    wrapper, typing, the engine) would cost every command its import time."""
    server_pid(served)
    bare = run_cli("python", "-c", "import sys; print(*sys.modules)", env=served)
    dump = tmp_path / "modules"
    result = run_cli("twrun", "--", "true", env={**served, "TASKWATCHER_DUMP_MODULES": str(dump)})
    assert result.returncode == 0, result.stderr
    caller = set((tmp_path / "modules.caller").read_text().split())
    assert "taskwatcher.cli.start" in caller and "taskwatcher.engine.supervisor" not in caller
    assert sorted(caller - set(bare.stdout.split()) - CALLER_EXTRA) == []
    assert "taskwatcher.engine.supervisor" in dump.read_text().split()  # the worker's own


def test_a_supervisor_gives_back_what_its_start_freed_a_second_into_its_task() -> None:
    source = FreeMemory(now=100.0)
    assert source.fileno() is None and source.deadline(100.0) == 100.0 + SETTLE_SECONDS
    source.handle(101.0)
    assert source.deadline(101.0) is None  # once


def test_giving_back_free_memory_shrinks_a_process_that_freed_much() -> None:
    """Blocks too big for Python's own allocator come from the C heap, which keeps them
    once freed (below its top) until trimmed."""
    program = (
        "import os\n"
        "from taskwatcher.engine.memory import give_back_free_memory\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "held = [bytearray(4000) for _ in range(20000)]\n"
        "keep = bytearray(4000)  # above them: the heap cannot simply shrink from its top\n"
        "del held\n"
        "before = rss(); give_back_free_memory(); print(before - rss())\n"
    )
    given_back = int(
        subprocess.run([PY, "-c", program], capture_output=True, text=True, check=True).stdout
    )
    assert given_back > 40 << 20  # most of the 80 MB freed
