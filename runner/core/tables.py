"""The names a manifest's table owns in the results file, and when two tables' names clash.

A table ``t`` is written as ``t_history`` (every answer), ``t_current_keys`` (the current
row of each key), ``t_sources`` (grounding) and the view ``t``; tables moved aside get
``_until_<stamp>`` after their name. All of them belong to ``t``'s owner, so two tables clash
when a name one of them writes could be a name of the other. ``gbatch_*`` is gbatch's own.
Pure: used by the results adapter (to build the names) and the integrity checks (to refuse
a manifest whose table would collide).
"""

from __future__ import annotations

HISTORY = "_history"
POINTER = "_current_keys"
SOURCES = "_sources"
RETIRED = "_until_"
BOOKKEEPING = "gbatch_"  # the bookkeeping tables: gbatch_manifests, gbatch_jobs, gbatch_owner...


def history(table: str) -> str:
    return table + HISTORY


def pointer(table: str) -> str:
    return table + POINTER


def sources(table: str) -> str:
    return table + SOURCES


def retired(name: str, stamp: str) -> str:
    """The name ``name`` (a table or one of its derived names) is moved aside to."""
    return name + RETIRED + stamp


def derived(table: str) -> tuple[str, ...]:
    """Every fixed name ``table`` writes."""
    return (table, history(table), pointer(table), sources(table))


def _role(table: str, name: str) -> str | None:
    """What ``name`` is to ``table`` (None when it is not one of its names)."""
    if name == table:
        return f"table {table!r} itself"
    fixed = {history(table): "history", pointer(table): "current-keys", sources(table): "sources"}
    if name in fixed:
        return f"the {fixed[name]} table of table {table!r}"
    if name.startswith(tuple(retired(n, "") for n in (table, history(table), sources(table)))):
        return f"a moved-aside table of table {table!r}"
    return None


def clash(table: str, other: str) -> str | None:
    """How ``table``'s names and ``other``'s overlap, as a phrase; None when they are apart."""
    if table == other:
        return f"table {table!r} is the same table"
    for one, two in ((table, other), (other, table)):
        for name in derived(one):
            role = _role(two, name)
            if role is not None:
                return f"{name!r} would be both {_role(one, name)} and {role}"
    return None


def keys(table: str) -> frozenset[str]:
    """What an index over many tables files ``table`` under: its fixed names, and each name
    that comes before a ``_until_`` in them. Two tables that ``clash`` share a key (a
    property test checks it), so a lookup by key finds every table worth asking about."""
    found = set(derived(table))
    for name in derived(table):
        at = name.find(RETIRED)
        while at != -1:
            found.add(name[:at])
            at = name.find(RETIRED, at + 1)
    return frozenset(found)


def reserved(table: str) -> str | None:
    """Why ``table`` may not be used at all (None when it may)."""
    if table.startswith(BOOKKEEPING) or history(table).startswith(BOOKKEEPING):
        return f"names starting with {BOOKKEEPING!r} are gbatch's bookkeeping tables"
    return None
