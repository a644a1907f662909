"""How twctl reports tasks it saw end (kill, killall, update, wait): a line each, or JSON.

One JSON shape for an ended task wherever it appears, so a script parses them all alike:
its `history --json` record, plus the exit status its twrun had (or would have had).
"""

from __future__ import annotations

from taskwatcher.cli.render import cell
from taskwatcher.engine.records import Ended
from taskwatcher.engine.stopping import twrun_exit_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def ended_line(record: Ended) -> str:
    """`task 3 (nightly): KILLED`, the name escaped and cut like every other cell."""
    return f"task {record.taskid} ({cell(record.taskname)}): {record.outcome}"


def ended_json(record: Ended) -> dict[str, Any]:
    """As `history --json` shows it, plus `exit_code`: what `wait` on the task exits with."""
    return {**record.as_json(), "exit_code": twrun_exit_code(record)}
