"""Tables on the terminal: each column as wide as its widest cell, whatever the names' length.

The layout is computed on the plain text and colours (:mod:`.colour`) are
added afterwards, so a long worker name or a painted state never pushes
the columns after it out of line.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from . import colour


def print_table(
    rows: Sequence[Sequence[str]], *, right: Collection[int] = (), states: Collection[int] = ()
) -> None:
    """Print ``rows`` (the first is the header) in aligned columns two spaces apart.

    ``right``: columns aligned to the right (numbers); ``states``: columns
    whose words are painted in their colours when stdout wants colour.
    """
    if not rows:
        return
    on = colour.wanted()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
            text = cell.rjust(width) if i in right else cell.ljust(width)
            if number and i in states:
                text = colour.state(text, on=on) if i not in right else text
            cells.append(text)
        print("  ".join(cells).rstrip())
