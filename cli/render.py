"""Turn task records into text: escaped cells, human times, plain tables, rich tables, JSON.

Records come from the store as plain dicts; this module only decides how they look.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from itertools import islice

from taskwatcher.cli import import_orjson
from taskwatcher.cli.fit import FIXED, Fit, cut_text, fitted_table
from taskwatcher.engine.records import storable
from taskwatcher.grammar import jsoncodec
from taskwatcher.grammar.datatype import datatype

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

    from rich.console import Console
    from rich.table import Table

# C0 controls, DEL and C1 controls: a task name must never move the cursor or colour the screen.
_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
#: Bidirectional controls: they reorder what follows them, so a name could hide or fake text.
_BIDI_CONTROLS = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROL_ESCAPES |= {code: f"\\u{code:04x}" for code in _BIDI_CONTROLS}
#: What a task's output keeps on a terminal: its lines and tabs; every other control is shown.
_OUTPUT_ESCAPES = {
    code: text for code, text in _CONTROL_ESCAPES.items() if code not in (ord("\n"), ord("\t"))
}
#: A C1 control in the JSON's UTF-8: 0xc2 never continues a character, and C1 controls can
#: only stand inside strings, so replacing these two bytes keeps the JSON exact.
_C1_IN_UTF8 = re.compile(b"\xc2[\x80-\x9f]")
#: The items a JSON stream (a long history, a log's lines) writes with the standard library
#: before it takes orjson: orjson writes an item ten times faster, but its import costs a
#: command some 20 ms, as much as 2,500 items, which a short listing would never win back.
ORJSON_AFTER = 2000

#: The longest value a table cell or a `show` line prints, in characters; a longer one is cut
#: to MAX_CELL - 1 and an ellipsis. JSON keeps every value whole.
MAX_CELL = 80

STATUS_STYLES = {
    "RESERVED": "cyan",
    "RUNNING": "green",
    "SILENT": "yellow",
    "STALLED": "bold red",
    "RETRYING": "yellow",
    "COMPLETED": "green",
    "FAILED": "red",
    "TIMEOUT": "bold red",
    "KILLED": "magenta",
    "LOST": "bold magenta",
    "EXPIRED": "dim",
}


def escape(value: object) -> str:
    """Show control characters as visible escapes so stored text cannot drive the terminal.

    Bytes that are not UTF-8 (in a path from the command line) show as `\\xNN`, as the
    database keeps them, so printing them never fails.
    """
    if value is None:
        return "-"
    text = value if type(value) is str else str(value)
    if text.isprintable():  # no control, format or surrogate character: nothing to escape
        return text
    return storable(text).translate(_CONTROL_ESCAPES)


def escape_output(text: str) -> str:
    """A task's output as a terminal shows it: as `escape` makes cells, but newlines and
    tabs kept, so the output reads as lines while no byte of it can drive the terminal."""
    return storable(text).translate(_OUTPUT_ESCAPES)


def cell(value: object) -> str:
    """A value escaped and cut to MAX_CELL characters: one huge field cannot flood a screen."""
    if isinstance(value, str) and len(value) > MAX_CELL:
        value = value[: MAX_CELL + 1]  # escape only what can be shown, and still see it is cut
    shown = escape(value)
    return shown if len(shown) <= MAX_CELL else shown[: MAX_CELL - 1] + "…"


def human_duration(seconds: float | None) -> str:
    """Seconds as `4s`, `3m05s` or `2h07m`: short enough for a table column."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def human_time(stamp: float | None, now: float | None = None) -> str:
    """A unix time as local clock time today, or with its date when older."""
    if stamp is None:
        return "-"
    now = time.time() if now is None else now
    local = time.localtime(stamp)
    if time.localtime(now)[:3] == local[:3]:
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M", local)


def yes_no(flag: object) -> str:
    """Booleans as the spec's yes/no."""
    return "yes" if flag else "no"


@datatype(frozen=True)
class Column:
    """One table column: its header, the record key it shows, how a value becomes text and
    how the column gives way on a narrow terminal."""

    header: str
    key: str
    human: Callable[[Any], str] = cell
    plain: Callable[[Any], str] = cell
    fit: Fit = FIXED


def _plain_seconds(value: float | None) -> str:
    return "-" if value is None else str(round(value))


def _plain_time(value: float | None) -> str:
    return "-" if value is None else str(int(value))


def seconds_column(header: str, key: str) -> Column:
    """A duration: `3m05s` on a terminal, whole seconds when piped."""
    return Column(header, key, human_duration, _plain_seconds)


def time_column(header: str, key: str) -> Column:
    """A timestamp: local clock time on a terminal, unix seconds when piped."""
    return Column(header, key, human_time, _plain_time)


#: Rows per rich table: a long listing on a terminal is printed as tables of this many rows,
#: since rich measures every row of a table before it prints any.
RICH_BATCH = 1000


def print_records(
    records: Iterable[dict[str, Any]],
    columns: Sequence[Column],
    *,
    as_json: bool,
    empty: str,
    title: str | None = None,
    caption: str | None = None,
    out: TextIO | None = None,
) -> None:
    """Print records the way the reader needs them: JSON, rich tables, or plain text.

    The records are streamed (rich holds RICH_BATCH of them at a time). Plain text walks them
    twice (the column widths, then the lines): `records` must yield the same rows each time,
    as a list does.
    """
    out = out or sys.stdout
    if as_json:
        print_json_array(records, out)
    elif out.isatty():
        _print_rich(records, columns, title, caption, empty, out)
    else:
        _print_plain(records, columns, empty, out)


def print_json_array(records: Iterable[Any], out: TextIO) -> None:
    """A JSON array written as it goes (`[`, the items, `]`): one item in memory at a time."""
    out.write("[")
    separator = ""
    for item in json_items(records):
        out.write(separator + item.decode())
        separator = ","
    out.write("]\n")


def _print_plain(
    records: Iterable[dict[str, Any]], columns: Sequence[Column], empty: str, out: TextIO
) -> None:
    """Aligned columns for pipes: stable, greppable, no colour; widths from a first walk."""
    widths = [len(column.header) for column in columns]
    rows = 0
    for record in records:
        rows += 1
        cells = _plain_cells(record, columns)
        widths = [max(width, len(text)) for width, text in zip(widths, cells, strict=True)]
    if not rows:
        print(empty, file=out)
        return
    _print_aligned([column.header for column in columns], widths, out)
    for record in records:
        _print_aligned(_plain_cells(record, columns), widths, out)


def _plain_cells(record: dict[str, Any], columns: Sequence[Column]) -> list[str]:
    return [column.plain(record.get(column.key)) for column in columns]


def _print_aligned(cells: Sequence[str], widths: Sequence[int], out: TextIO) -> None:
    line = "  ".join(text.ljust(width) for text, width in zip(cells, widths, strict=True))
    out.write(line.rstrip() + "\n")


def _print_rich(
    records: Iterable[dict[str, Any]],
    columns: Sequence[Column],
    title: str | None,
    caption: str | None,
    empty: str,
    out: TextIO,
) -> None:
    """Rich tables of RICH_BATCH rows; the title goes on the first, the caption on the last."""
    from rich.console import Console

    console = Console(file=out)
    batches = _batches(records, RICH_BATCH)
    batch = next(batches, None)
    if batch is None:
        print(empty, file=out)
    while batch is not None:
        following = next(batches, None)
        console.print(rich_table(console, batch, columns, title, None if following else caption))
        title, batch = None, following


def _batches(records: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(records)
    while batch := list(islice(iterator, size)):
        yield batch


def rich_table(
    console: Console,
    records: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    title: str | None,
    caption: str | None = None,
) -> Table:
    """A rich Table within the console's width: human times, coloured statuses, cells never
    read as markup, free text cut and the least needed columns left out when it is narrow."""
    from rich.text import Text

    rows = []
    for record in records:
        cells = []
        for column in columns:
            value = record.get(column.key)
            style = STATUS_STYLES.get(value, "") if column.key in ("status", "outcome") else ""
            text = column.human(value)
            cells.append(cut_text(text, style) if column.fit.free else Text(text, style=style))
        rows.append(cells)
    headers = [column.header for column in columns]
    fits = [column.fit for column in columns]
    return fitted_table(
        console,
        console.width,
        headers,
        fits,
        rows,
        title=title,
        caption=caption,
        header_style="bold",
    )


def print_json(value: Any, *, pretty: bool = False, out: TextIO | None = None) -> None:
    """JSON on one line (or indented), as the machine interface."""
    (out or sys.stdout).write(json_bytes(value, pretty=pretty).decode() + "\n")


def json_bytes(value: Any, *, pretty: bool = False) -> bytes:
    """JSON (orjson's bytes: see jsoncodec) with C1 controls escaped too (`\\u009b`), as C0
    ones are. Raw, a C1 control such as U+009B (CSI) drives a terminal that shows the JSON.
    """
    return _without_c1(jsoncodec.dumps(value, pretty=pretty))


def json_items(values: Iterable[Any]) -> Iterator[bytes]:
    """Each value as json_bytes writes it, those after the first ORJSON_AFTER through orjson
    (the same bytes, floats included: see jsoncodec)."""
    dumps = jsoncodec.dumps
    for count, value in enumerate(values):
        if count == ORJSON_AFTER:
            dumps = import_orjson().dumps
        yield _without_c1(dumps(value))


def _without_c1(data: bytes) -> bytes:
    return _C1_IN_UTF8.sub(_escaped_c1, data)


def _escaped_c1(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % match[0][1]  # b"\xc2\x9b" is U+009B


def silence_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone, so exiting flushes nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def key_values(pairs: Iterable[tuple[str, Any]], whole: Collection[str] = ()) -> str:
    """`key: value` lines with aligned keys, for `twctl show`; the values of the keys in
    `whole` (a path to copy, a task's output) are not cut, and each of their lines gets an
    aligned line of its own."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0)
    indent = "\n" + " " * (width + 2)
    return "\n".join(
        f"{key.ljust(width)}  "
        + (indent.join(_block(value)) if key in whole and value else _shown(value))
        for key, value in pairs
    )


def _block(value: object) -> list[str]:
    return [escape_output(line) for line in str(value).split("\n")]


def _shown(value: Any) -> str:
    """A value as a user reads it: argv and feedback as JSON, flags as yes/no, never a repr."""
    if isinstance(value, bool):
        return yes_no(value)
    if isinstance(value, list | dict):
        return cell(jsoncodec.dumps(value).decode())
    return cell(value)
