"""Prompt templates: text with ``{{ column }}`` placeholders, parsed once into parts.

Deliberately not Jinja: a template compiles to one DuckDB string expression (see
``runner.adapters.sources``), so a million rows render in the database, not in a Python loop.
``{{ name }}`` inserts the column ``name`` (NULL renders empty); ``{{ "odd name" }}`` quotes a
column whose name is not an identifier. Called by the loader (validation) and the data plane.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUOTED = re.compile(r'^"([^"]+)"$')


@dataclass(frozen=True)
class Literal:
    text: str


@dataclass(frozen=True)
class Column:
    name: str


Part = Literal | Column


class TemplateError(ValueError):
    """A placeholder is not a column name; ``offset`` is its position in the template."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


def parse(template: str) -> tuple[Part, ...]:
    """The template as literal and column parts, in order; raises TemplateError."""
    parts: list[Part] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > position:
            parts.append(Literal(template[position : match.start()]))
        inner = match.group(1).strip()
        quoted = _QUOTED.match(inner)
        if quoted:
            parts.append(Column(quoted.group(1)))
        elif _IDENT.match(inner):
            parts.append(Column(inner))
        else:
            raise TemplateError(
                f"placeholder {{{{{match.group(1)}}}}} is not a column name "
                '(use {{ column }} or {{ "column name" }})',
                match.start(),
            )
        position = match.end()
    if position < len(template):
        parts.append(Literal(template[position:]))
    if "{{" in "".join(p.text for p in parts if isinstance(p, Literal)):
        raise TemplateError("unclosed {{ in template", template.find("{{", position))
    return tuple(parts)


def columns(template: str) -> list[str]:
    """The distinct column names a template uses, in first-use order."""
    seen: dict[str, None] = {}
    for part in parse(template):
        if isinstance(part, Column):
            seen.setdefault(part.name, None)
    return list(seen)
