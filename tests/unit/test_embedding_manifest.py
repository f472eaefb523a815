"""Embedding manifests (``task: embed``): what they may say, the EmbedContentRequest each row
becomes, what its hash covers, and that generation manifests keep their digests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.core.loader import load_file, load_text
from runner.core.manifest import Manifest, default_dimensions
from runner.core.requests import request_hash, request_shape, token_contents
from runner.errors import ManifestErrors

REPO = Path(__file__).resolve().parents[2]


def embed(**spec: Any) -> Manifest:
    base: dict[str, Any] = {
        "task": "embed",
        "model": "gemini-embedding-001",
        "source": {"rows": [{"a": 1, "t": "x"}]},
        "prompt": {"template": "{{ a }}"},
        "embedding": {"dimensions": 8, "task_type": "RETRIEVAL_DOCUMENT", "title_column": "t"},
    }
    base.update(spec)
    return Manifest.model_validate({"metadata": {"name": "m"}, "spec": base})


def test_a_row_becomes_an_embedcontent_request_with_its_settings() -> None:
    shape = request_shape(embed())
    assert json.loads(shape.render("hello", "Greeting")) == {
        "content": {"parts": [{"text": "hello"}]},
        "title": "Greeting",
        "taskType": "RETRIEVAL_DOCUMENT",
        "outputDimensionality": 8,
    }
    bare = request_shape(embed(embedding=None))
    assert json.loads(bare.render("hello")) == {"content": {"parts": [{"text": "hello"}]}}
    assert token_contents(json.loads(bare.render("hi"))) == [{"parts": [{"text": "hi"}]}]


def test_the_hash_covers_model_text_dimensions_task_type_and_title() -> None:
    def hashed(manifest: Manifest, text: str = "t", title: str | None = "T") -> str:
        shape = request_shape(manifest)
        return request_hash(shape.salt, shape.render(text, title))

    base = hashed(embed())
    assert hashed(embed()) == base
    others = [
        hashed(embed(model="gemini-embedding-2")),
        hashed(embed(), text="u"),
        hashed(embed(), title="U"),
        hashed(embed(), title=None),
        hashed(embed(embedding={"dimensions": 16, "task_type": "RETRIEVAL_DOCUMENT"})),
        hashed(embed(embedding={"dimensions": 8, "task_type": "CLUSTERING"})),
    ]
    assert len({base, *others}) == 1 + len(others)


@given(st.text(), st.one_of(st.none(), st.text()))
def test_any_text_and_title_render_to_valid_json(text: str, title: str | None) -> None:
    request = json.loads(request_shape(embed()).render(text, title))
    assert request["content"]["parts"] == [{"text": text}]
    assert request.get("title") == title


def test_the_vector_size_is_declared_or_the_models_default() -> None:
    assert embed().spec.dimensions == 8
    assert embed(embedding=None).spec.dimensions == 3072
    assert default_dimensions("models/gemini-embedding-2-preview") == 3072
    assert default_dimensions("text-embedding-004") == 768
    assert default_dimensions("my-own-embedder") is None
    generate = Manifest.model_validate(
        {
            "metadata": {"name": "g"},
            "spec": {
                "model": "gemini-2.5-flash",
                "source": {"rows": [{}]},
                "prompt": {"template": "x"},
            },
        }
    )
    assert generate.spec.dimensions is None


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"prompt": {"template": "x", "system": "s"}}, "prompt", "system does not apply"),
        ({"prompt": {"template": "x", "media": ["p"]}}, "prompt", "media does not apply"),
        ({"generation": {"temperature": 0}}, "generation", "does not apply to task: embed"),
        ({"output_schema": {"type": "object"}}, "output_schema", "does not apply"),
        ({"cache": {"text": "c"}}, "cache", "does not apply"),
        ({"tools": {"google_search": True}}, "tools", "does not apply"),
        ({"embedding": {"title_column": "t"}}, "embedding", "only to task_type RETRIEVAL_DOC"),
        ({"embedding": {"dimensions": 0}}, "embedding.dimensions", "greater than or equal to 1"),
        ({"model": "my-embedder", "embedding": {}}, "embedding", "set embedding.dimensions"),
        ({"model": "my-embedder", "embedding": None}, "", "set embedding.dimensions"),
        ({"task": "generate", "model": "gemini-2.5-flash"}, "embedding", "only to task: embed"),
        ({"task": "generate", "embedding": None}, "model", "is an embedding model"),
        (
            {"source": {"requests": "r.jsonl"}, "prompt": None},
            "embedding",
            "title_column does not apply to source.requests",
        ),
    ],
)
def test_what_an_embedding_manifest_may_not_say_is_refused_at_its_field(
    spec: dict[str, Any], field: str, words: str
) -> None:
    document = {
        "task": "embed",
        "model": "gemini-embedding-001",
        "source": {"rows": [{"a": 1}]},
        "prompt": {"template": "{{ a }}"},
        "embedding": {"task_type": "RETRIEVAL_DOCUMENT", "title_column": "a"},
        **spec,
    }
    document = {k: v for k, v in document.items() if v is not None}
    text = json.dumps(document)
    with pytest.raises(ManifestErrors) as refused:
        load_text(text, path=REPO / "manifests" / "x.yaml", root=REPO)
    (error,) = refused.value.errors
    assert error.field == field
    assert words in error.reason


def test_ready_made_embedding_lines_need_no_prompt() -> None:
    manifest = embed(source={"requests": "lines.jsonl"}, prompt=None, embedding={"dimensions": 4})
    assert manifest.spec.dimensions == 4


# Digests of the example generation manifests as the code before ``task`` computed them:
# a new field must not make every existing manifest a new version (and its jobs superseded).
BEFORE_EMBEDDINGS = {
    "product-copy.yaml": "420060e1ee5dea4e43e4a0c981bc2976853bb511972373a2605fe1cc0afcdfab",
    "seed_requests.yaml": "ca41354492033bf60dc9ccf428fdeefdf952ea1b41a54024cefbe7e8b215f110",
}


@pytest.mark.parametrize("name", sorted(BEFORE_EMBEDDINGS))
def test_a_generation_manifest_keeps_its_digest(name: str) -> None:
    (loaded,) = load_file(REPO / "manifests" / name, root=REPO)
    assert loaded.digest == BEFORE_EMBEDDINGS[name]
    dumped = loaded.manifest.model_dump(mode="json", by_alias=True)["spec"]
    assert "task" not in dumped and "embedding" not in dumped
    assert "task" in embed().model_dump(mode="json")["spec"]  # an embedding's is its own
