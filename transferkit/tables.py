"""Tables that read well in a terminal, a log file and CI: Rich boxes on a terminal wide enough to hold every
cell whole, plain whole lines otherwise. A cell (a number, a name, a path) is never cut."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

BOX_OVERHEAD = 3  # a Rich column's padding and border


def table_width(headers: list[str], rows: list[list[str] | None]) -> int:
    """Columns a Rich table needs to show every header and cell whole."""
    rows = [row for row in rows if row is not None]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    return sum(w + BOX_OVERHEAD for w in widths) + 1


def plain_lines(headers: list[str], rows: list[list[str] | None], right: set[int] = frozenset()) -> list[str]:
    """The table as aligned plain-text lines, header first, columns two spaces apart, nothing cut."""
    rows = [row for row in rows if row is not None]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def print_table(console: Console, headers: list[str], rows: list[list[str] | None], title: str | None = None,
                right: set[int] = frozenset()) -> None:
    """A Rich table when the console is a terminal wide enough for every cell whole, else plain lines; a None row
    is a section line in the box (nothing in plain lines)."""
    if console.is_terminal and table_width(headers, rows) <= console.width:
        table = Table(title=title)
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if i in right else "left", no_wrap=True)
        for row in rows:
            if row is None:
                table.add_section()
            else:
                table.add_row(*row)
        console.print(table)
        return
    if title:
        console.print(title, markup=False, highlight=False, soft_wrap=True)
    for text in plain_lines(headers, rows, right):
        console.print(text, markup=False, highlight=False, soft_wrap=True)
