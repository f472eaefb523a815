"""JSON Schema to DuckDB types: scalars, enums, nullables, nesting, and the fallbacks."""

import pytest

from runner.core.schema_types import columns, duckdb_type, required, structure_json


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "VARCHAR"),
        ({"type": "string", "enum": ["a", "b"]}, "VARCHAR"),
        ({"enum": ["a", "b"]}, "VARCHAR"),
        ({"type": "integer"}, "BIGINT"),
        ({"type": "NUMBER"}, "DOUBLE"),
        ({"type": "boolean"}, "BOOLEAN"),
        ({"type": ["integer", "null"]}, "BIGINT"),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, "VARCHAR"),
        ({"type": "array", "items": {"type": "string"}}, "VARCHAR[]"),
        ({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, "DOUBLE[][]"),
        (
            {"type": "object", "properties": {"w": {"type": "number"}, "c": {"type": "string"}}},
            'STRUCT("w" DOUBLE, "c" VARCHAR)',
        ),
        ({"type": "object"}, "JSON"),
        ({"type": "array"}, "JSON"),
        ({}, "JSON"),
    ],
)
def test_types(schema: dict[str, object], expected: str) -> None:
    assert duckdb_type(schema) == expected


def test_top_level_columns_structure_and_required() -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["title", "ghost"],
    }
    assert columns(schema) == [("title", "VARCHAR"), ("tags", "VARCHAR[]")]
    assert structure_json(schema) == '{"title": "VARCHAR", "tags": ["VARCHAR"]}'
    assert required(schema) == ["title"]
