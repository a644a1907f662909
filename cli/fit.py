"""Tables that fit the terminal's width without wrapping a cell.

Ids, statuses, pids, times and durations are read at a glance only when whole and on one
line, so those columns are never cut; free text (names, info fields, messages) is cut with
an ellipsis; and when even so the table is too wide, its least needed columns are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

from taskwatcher.grammar.datatype import datatype

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

#: The narrowest a free-text column is cut to before columns drop out to make room for it.
FREE_MIN = 10
#: What a column adds to its content in a boxed rich table: a space each side, a border.
COLUMN_FRAME = 3
#: The border on a boxed table's left edge.
LEFT_EDGE = 1


@datatype(frozen=True)
class Fit:
    """How a column gives way on a narrow terminal: `free` text is cut with an ellipsis;
    a column with a `rank` drops out, rank 1 first; the others are always shown whole."""

    free: bool = False
    rank: int | None = None


FIXED = Fit()
FREE = Fit(free=True)


def kept_columns(widths: Sequence[int], fits: Sequence[Fit], room: int) -> list[int]:
    """The indexes of the columns a table of `room` cells shows: ranked columns drop out in
    rank order until the others, free ones cut to FREE_MIN, fit beside each other."""
    needs = [
        min(width, FREE_MIN) if fit.free else width for width, fit in zip(widths, fits, strict=True)
    ]
    kept = list(range(len(widths)))
    droppable = sorted((fit.rank, index) for index, fit in enumerate(fits) if fit.rank is not None)
    for _, index in droppable:
        if LEFT_EDGE + sum(needs[i] + COLUMN_FRAME for i in kept) <= room:
            break
        kept.remove(index)
    return kept


def cut_text(text: str, style: str = "") -> Text:
    """A free-text cell: one line, cut with an ellipsis when its column is narrower."""
    from rich.text import Text

    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


def fitted_table(
    console: Console,
    room: int,
    headers: Sequence[str],
    fits: Sequence[Fit],
    rows: Sequence[Sequence[RenderableType]],
    **options: Any,
) -> Table:
    """A rich Table of the columns that fit in `room` cells (free-text cells made by
    `cut_text`); `options` go to the Table (title, caption, styles)."""
    from rich.table import Table
    from rich.text import Text

    kept = kept_columns(_natural_widths(console, headers, rows), fits, room)
    table = Table(**options)
    for index in kept:
        # Rich shrinks only wrappable columns, widest first: the free ones, whose cells
        # are cut rather than wrapped. The fixed ones keep their width.
        header = Text(headers[index], no_wrap=True, overflow="ellipsis")
        table.add_column(header, no_wrap=not fits[index].free, overflow="ellipsis")
    for row in rows:
        table.add_row(*(row[index] for index in kept))
    return table


def _natural_widths(
    console: Console, headers: Sequence[str], rows: Sequence[Sequence[RenderableType]]
) -> list[int]:
    """Each column's widest cell, header included, in cells on one line."""
    from rich.cells import cell_len
    from rich.measure import Measurement
    from rich.text import Text

    def width(value: RenderableType) -> int:
        if isinstance(value, str | Text):  # escaped text: it holds no newline
            return cell_len(str(value))
        return Measurement.get(console, console.options, value).maximum

    widths = [cell_len(header) for header in headers]
    for row in rows:
        widths = [max(widest, width(value)) for widest, value in zip(widths, row, strict=True)]
    return widths
