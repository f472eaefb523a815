"""The request shape: what goes on the wire for a manifest, and what changes the hash."""

import json

from hypothesis import given
from hypothesis import strategies as st

from runner.core.manifest import Manifest
from runner.core.requests import CACHE_PLACEHOLDER, request_hash, request_shape


def manifest(**spec: object) -> Manifest:
    base: dict[str, object] = {
        "model": "gemini-2.5-flash",
        "source": {"rows": [{"a": 1}]},
        "prompt": {"template": "{{ a }}", "system": "Be brief."},
    }
    base.update(spec)
    return Manifest.model_validate({"metadata": {"name": "m"}, "spec": base})


def test_the_request_carries_system_tools_generation_and_schema_on_the_wire() -> None:
    shape = request_shape(
        manifest(
            generation={"temperature": 0.2, "max_output_tokens": 64, "thinking_budget": 0},
            tools={"google_search": True},
            output_schema={"type": "object", "properties": {"t": {"type": "string"}}},
        )
    )
    request = json.loads(shape.render("hello"))
    assert request["contents"] == [{"role": "user", "parts": [{"text": "hello"}]}]
    assert request["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert request["tools"] == [{"googleSearch": {}}]
    assert request["generationConfig"] == {
        "temperature": 0.2,
        "maxOutputTokens": 64,
        "thinkingConfig": {"thinkingBudget": 0},
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object", "properties": {"t": {"type": "string"}}},
    }


def test_with_a_cache_the_request_names_it_and_leaves_system_and_tools_to_it() -> None:
    shape = request_shape(manifest(cache={"text": "context"}, tools={"google_search": True}))
    request = json.loads(shape.render("x"))
    assert request["cachedContent"] == CACHE_PLACEHOLDER
    assert "systemInstruction" not in request and "tools" not in request


def test_the_model_and_the_cache_content_change_the_hash_but_not_the_request() -> None:
    flash, pro = request_shape(manifest()), request_shape(manifest(model="gemini-2.5-pro"))
    assert flash.render("x") == pro.render("x")
    assert request_hash(flash.salt, flash.render("x")) != request_hash(pro.salt, pro.render("x"))
    cached = request_shape(manifest(), cache_digest="abc")
    assert request_hash(cached.salt, "r") != request_hash(flash.salt, "r")


@given(st.text())
def test_any_text_renders_to_valid_json_that_round_trips(text: str) -> None:
    request = json.loads(request_shape(manifest()).render(text))
    assert request["contents"][0]["parts"][0]["text"] == text
