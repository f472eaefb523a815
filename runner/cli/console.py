"""Where the CLI's text goes: rich on a terminal, plain text anywhere else.

On a terminal (and without ``NO_COLOR``) tables are drawn by rich, fitted to the terminal's
width (wide columns fold, the rest are cut with an ellipsis) and statuses are coloured. In a
pipe, a file or a test, text is printed as it is: tables as aligned columns, one line per row,
never wrapped, no escape codes, so ``grep`` and ``awk`` work. The streams are looked up at each
call (tests swap ``sys.stdout``). Called by the commands.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from runner.cli import render
from runner.cli.render import STATUS_STYLES


def _stream(err: bool) -> TextIO:
    return sys.stderr if err else sys.stdout


def is_terminal(*, err: bool = False) -> bool:
    stream = _stream(err)
    return bool(getattr(stream, "isatty", lambda: False)())


def rich_console(*, err: bool = False) -> Console:
    """A rich console on the stream as it is now (only used when it is a terminal)."""
    return Console(file=_stream(err), highlight=False, markup=False, soft_wrap=False)


def say(text: str = "", *, err: bool = False) -> None:
    """A line (or lines) of text, as it is."""
    stream = _stream(err)
    stream.write(text + "\n")
    stream.flush()


def table(t: render.Table, *, err: bool = False) -> None:
    if not is_terminal(err=err):
        say(render.plain(t), err=err)
        return
    terminal = rich_console(err=err)
    t = render.fitted(t, terminal.width)
    drawn = RichTable(box=None, header_style="bold", pad_edge=False, expand=False)
    for name in t.columns:
        wide = name in t.wide
        drawn.add_column(
            name,
            overflow="fold" if wide else "ellipsis",
            no_wrap=not wide,
            ratio=1 if wide else None,
        )
    styled = dict(t.styles)
    for row in t.rows:
        cells = []
        for index, value in enumerate(row):
            style = styled.get(index)
            if style == "status":
                style = STATUS_STYLES.get(value, "")
            cells.append(Text(value, style=style or ""))
        drawn.add_row(*cells)
    terminal.print(drawn)


def document(view: BaseModel) -> None:
    """A view as one JSON document (``-o json``): the schema in docs/cli-output.schema.json."""
    say(json.dumps(view.model_dump(mode="json"), indent=2, ensure_ascii=False))
