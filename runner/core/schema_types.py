"""JSON Schema -> DuckDB column types, and the structure DuckDB's ``from_json`` parses with.

Strings (enums included) are VARCHAR, integers BIGINT, numbers DOUBLE, booleans BOOLEAN,
objects with properties STRUCT, arrays LIST of their items; a nullable type (``["x",
"null"]`` or ``anyOf`` with null) is its non-null type; anything else stays JSON. Pure.
Called by the results adapter when it creates and fills typed columns.
"""

from __future__ import annotations

import json
from typing import Any

SCALARS = {"string": "VARCHAR", "integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN"}


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without its null alternative (``anyOf``/``oneOf`` or a type list)."""
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list):
            rest = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            if len(rest) == 1:
                return _non_null(rest[0])
    kind = schema.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        if len(rest) == 1:
            return {**schema, "type": rest[0]}
    return schema


def _kind(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind.lower()
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return "string"
    return None


def structure(schema: dict[str, Any]) -> Any:
    """The ``from_json`` structure of a schema: a type name, a dict or a one-item list."""
    schema = _non_null(schema)
    kind = _kind(schema)
    if kind in SCALARS:
        return SCALARS[kind]
    if kind == "object" and isinstance(schema.get("properties"), dict) and schema["properties"]:
        return {name: structure(sub) for name, sub in schema["properties"].items()}
    if kind == "array" and isinstance(schema.get("items"), dict):
        return [structure(schema["items"])]
    return "JSON"


def duckdb_type(schema: dict[str, Any]) -> str:
    """The DuckDB column type of a schema."""
    return _type_of(structure(schema))


def _type_of(shape: Any) -> str:
    if isinstance(shape, str):
        return shape
    if isinstance(shape, list):
        return _type_of(shape[0]) + "[]"
    fields = ", ".join(
        f'"{name.replace(chr(34), chr(34) * 2)}" {_type_of(sub)}' for name, sub in shape.items()
    )
    return f"STRUCT({fields})"


def columns(output_schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(column, DuckDB type) for each top-level property of an object schema."""
    properties = output_schema.get("properties", {})
    return [(name, duckdb_type(sub)) for name, sub in properties.items()]


def structure_json(output_schema: dict[str, Any]) -> str:
    """The top-level ``from_json`` structure as the JSON text DuckDB takes."""
    shape = structure(output_schema)
    return json.dumps(shape if isinstance(shape, dict) else {})


def required(output_schema: dict[str, Any]) -> list[str]:
    """Top-level properties the answer must have (a missing one fails the row)."""
    names = output_schema.get("required", [])
    props = output_schema.get("properties", {})
    return [n for n in names if isinstance(n, str) and n in props]
