"""Tools and grounding: each tool reaches the request as the API expects, and Google Search
grounding lands in the ``<table>_sources`` child table, joinable on ``key``."""

from __future__ import annotations

import json

from runner.emulator import Emulator
from tests.conftest import Gbatch, uploads


def test_every_tool_is_mapped_and_search_grounding_fills_the_sources_table(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    weather = {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    gbatch.write(
        "facts.yaml",
        "name: facts\nmodel: gemini-2.5-flash\n"
        "source: {key: city, rows: [{city: Oslo}, {city: Lima}]}\n"
        "prompt: {template: 'Latest news from {{ city }}'}\n"
        "tools:\n  google_search: true\n  url_context: true\n  code_execution: true\n"
        f"  functions: [{json.dumps(weather)}]\n",
    )
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    (upload,) = uploads(emulator)
    line = json.loads(upload.path.read_bytes().splitlines()[0])
    assert line["request"]["tools"] == [
        {"googleSearch": {}},
        {"urlContext": {}},
        {"codeExecution": {}},
        {"functionDeclarations": [weather]},
    ]
    sources = gbatch.sql(
        "select s.key, s.query, s.uri, s.title, s.segment_text is not null "
        "from facts_sources s join facts f using (key) order by s.key, s.uri"
    )
    assert {row[0] for row in sources} == {"Lima", "Oslo"}
    for key, query, uri, title, has_span in sources:
        assert str(key) in str(query)  # the emulator searches for the prompt
        assert str(uri).startswith("https://") and title
        assert has_span
