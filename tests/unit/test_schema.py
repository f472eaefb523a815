"""`gbatch schema`: one JSON Schema for both manifest forms, every field described with an
example, and every example manifest in the repository valid under it and the loader."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from runner.core.loader import load_text
from runner.core.manifest import json_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def examples() -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / "manifests").glob("*.yaml")):
        yield path.name, path.read_text()
    readme = (REPO / "README.md").read_text()
    for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL)):
        yield f"README.md yaml block {index + 1}", block


EXAMPLES = dict(examples())


def properties(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, schema) of a declared field, not descending into examples or defaults."""
    if isinstance(node, dict):
        for name, field in node.get("properties", {}).items():
            yield f"{where}.{name}", field
        for key, value in node.items():
            if key not in ("examples", "default", "properties"):
                yield from properties(value, f"{where}/{key}")
        for name, field in node.get("properties", {}).items():
            yield from properties(field, f"{where}.{name}")
    elif isinstance(node, list):
        for item in node:
            yield from properties(item, where)


def test_the_schema_is_valid_and_has_both_forms() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    titles = [form["title"] for form in SCHEMA["anyOf"]]
    assert titles == ["Manifest (full form)", "Manifest (short form)"]


def test_every_field_has_a_description_and_an_example_that_is_valid() -> None:
    fields = dict(properties(SCHEMA))
    assert len(fields) >= 50  # both forms' top levels and every section
    lacking = [where for where, field in fields.items() if not field.get("description")]
    assert lacking == []
    lacking = [where for where, field in fields.items() if not field.get("examples")]
    assert lacking == []
    for where, field in fields.items():
        check = jsonschema.Draft202012Validator({**field, "$defs": SCHEMA["$defs"]})
        for example in field["examples"]:
            assert not list(check.iter_errors(example)), f"{where}: {example!r}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_example_manifest_is_valid_under_the_schema_and_the_loader(name: str) -> None:
    assert len(EXAMPLES) >= 4  # manifests/*.yaml and the README's blocks were found
    text = EXAMPLES[name]
    for document in yaml.safe_load_all(text):
        problems = [
            f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(document)
        ]
        assert problems == [], name
    assert load_text(text, path=REPO / "manifests" / "example.yaml", root=REPO)


@pytest.mark.parametrize(
    "document",
    [
        {"model": "gemini-2.5-flash", "source": {"path": "a.csv", "query": "select 1"}},
        {"model": "gemini-2.5-flash", "source": {"path": "a.csv"}, "modle": "x"},
        {"model": "gemini-2.5-flash"},
        {"apiVersion": "gbatch/v1", "metadata": {"name": "x"}, "spec": {"model": "m"}},
        {"metadata": {"name": "Not A Name"}, "spec": {"model": "m", "source": {"rows": []}}},
    ],
)
def test_what_the_loader_refuses_the_schema_refuses(document: dict[str, Any]) -> None:
    assert list(VALIDATOR.iter_errors(document))
