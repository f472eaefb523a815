"""``gbatch init DATA_FILE``: the text of a first manifest for a data file.

Pure: given what ``runner.adapters.datafiles.describe`` saw, it names the manifest after the
file, guesses the key (a column unique and non-null in every row, id-like names first; none
found: a stable row hash), and writes a prompt template that lists every column, for the user
to cut down. A JSONL of ready ``{"key", "request"}`` lines gets the three-line manifest.
Called by ``commands.cmd_init``.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePath

from runner.adapters.datafiles import DataFile

DEFAULT_MODEL = "gemini-2.5-flash"
_ID_LIKE = re.compile(r"^(id|key|sku|uuid|code|slug)$|(_id|_key|_sku|_code)$", re.IGNORECASE)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def manifest_name(path: PurePath) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_") or "batch"
    return (name if name[0].isalpha() else f"data-{name}")[:63]


def guess_key(data: DataFile) -> str | None:
    types = dict(data.columns)
    usable = [c for c in data.unique if not types[c].startswith(("DOUBLE", "FLOAT", "STRUCT"))]
    for column in usable:
        if _ID_LIKE.search(column):
            return column
    return usable[0] if usable else None


def is_requests_file(data: DataFile) -> bool:
    """Ready batch lines: exactly ``key`` and ``request`` (an object) per line."""
    names = {name: kind for name, kind in data.columns}
    return (
        data.format == "jsonl"
        and set(names) == {"key", "request"}
        and names["request"].startswith(("STRUCT", "JSON", "MAP"))
    )


def placeholder(column: str) -> str:
    return "{{ " + (column if _IDENT.match(column) else json.dumps(column)) + " }}"


def manifest_text(
    data: DataFile, *, relative: str, name: str, key: str | None, model: str = DEFAULT_MODEL
) -> str:
    if is_requests_file(data):
        return (
            f"# {data.rows} ready request line(s) from {relative}, sent as they are.\n"
            f"name: {name}\nmodel: {model}\nsource:\n  requests: {json.dumps(relative)}\n"
        )
    listed = ", ".join(f"{n} ({t.lower()})" for n, t in data.columns)
    key_line = (
        f"    key: {json.dumps(key)}        # unique and non-null in all {data.rows} rows\n"
        if key is not None
        else "    # key: <column>    # no column is unique in every row: keys are row hashes\n"
    )
    template = "".join(f"      {n}: {placeholder(n)}\n" for n, _ in data.columns)
    return (
        f"# Written by gbatch init for {relative} ({data.format}, {data.rows} rows).\n"
        f"# Columns: {listed}\n"
        "# Edit the prompt, then: gbatch plan <this file>; gbatch apply <this file> --wait\n"
        "apiVersion: gbatch/v1\n"
        "kind: Batch\n"
        f"metadata:\n  name: {name}\n"
        "spec:\n"
        f"  model: {model}\n"
        "  source:\n"
        f"    path: {json.dumps(relative)}\n"
        f"{key_line}"
        "  prompt:\n"
        "    # system: You are a careful assistant.\n"
        "    template: |\n"
        "      Answer about this record.\n"
        f"{template}"
        "  generation: {temperature: 0.2, max_output_tokens: 512}\n"
        "  policy: {max_cost_usd: 5}   # nothing is submitted past this estimate\n"
    )
