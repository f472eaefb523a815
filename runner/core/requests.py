"""The shape of one request built from a manifest, and the request hash.

A GenerateContentRequest (``task: generate``) or an EmbedContentRequest (``task: embed``).
Everything but the user text (and an embedding's title) is the same for every row of a
manifest, so the request is ``prefix + json(text) + close + [title] + suffix``: the data plane
renders and escapes the text inside DuckDB and glues these constant strings around it.
Called by the data plane and the planner.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from runner.core.manifest import Manifest

CACHE_PLACEHOLDER = "cachedContents/__gbatch_cache__"
MEDIA_PLACEHOLDER = "gbatch-media:"  # + the file's sha256; the uploaded file's uri replaces it
PARTS_OPEN = '{"contents":[{"role":"user","parts":['
EMBED_OPEN = '{"content":{"parts":['  # EmbedContentRequest: one content, not a list
# A request set of ``task: embed`` carries its vector size in this column (the same value on
# every row): the results ingest reads it to make ``embedding`` a FLOAT[N] column.
EMBED_DIMENSIONS_COLUMN = "__embed_dimensions"


@dataclass(frozen=True)
class RequestShape:
    """The constant parts of every templated request of one manifest version."""

    prefix: str  # up to the text part's value: PARTS_OPEN (or EMBED_OPEN) + '{"text":'
    suffix: str
    salt: str
    close: str = ""  # embeddings: closes the content; a per-row title follows it

    def render(self, text: str, title: str | None = None) -> str:
        """One request's JSON for a rendered prompt (the slow path: tests and small sets)."""
        named = "" if title is None else ',"title":' + json.dumps(title, ensure_ascii=False)
        return self.prefix + json.dumps(text, ensure_ascii=False) + self.close + named + self.suffix


def request_fields(manifest: Manifest) -> dict[str, Any]:
    """The request's fields other than ``contents``, camelCase as on the wire."""
    spec = manifest.spec
    fields: dict[str, Any] = {}
    uses_cache = spec.cache is not None
    if spec.prompt and spec.prompt.system and not uses_cache:
        fields["systemInstruction"] = {"parts": [{"text": spec.prompt.system}]}
    tools = tool_list(manifest)
    if tools and not uses_cache:
        fields["tools"] = tools
    generation = generation_config(manifest)
    if generation:
        fields["generationConfig"] = generation
    if uses_cache:
        fields["cachedContent"] = CACHE_PLACEHOLDER
    return fields


def tool_list(manifest: Manifest) -> list[dict[str, Any]]:
    """The manifest's tools as the API's ``tools`` list."""
    declared = manifest.spec.tools
    tools: list[dict[str, Any]] = []
    if declared.google_search:
        tools.append({"googleSearch": {}})
    if declared.url_context:
        tools.append({"urlContext": {}})
    if declared.code_execution:
        tools.append({"codeExecution": {}})
    if declared.functions:
        tools.append({"functionDeclarations": list(declared.functions)})
    return tools


def generation_config(manifest: Manifest) -> dict[str, Any]:
    """``generationConfig`` from the generation block and the output schema."""
    gen = manifest.spec.generation
    config: dict[str, Any] = {}
    for field, wire in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("max_output_tokens", "maxOutputTokens"),
        ("stop_sequences", "stopSequences"),
        ("seed", "seed"),
    ):
        value = getattr(gen, field)
        if value is not None:
            config[wire] = value
    if gen.thinking_budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": gen.thinking_budget}
    if manifest.spec.output_schema is not None:
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = manifest.spec.output_schema
    return config


def embed_fields(manifest: Manifest) -> dict[str, Any]:
    """An EmbedContentRequest's fields other than ``content`` and ``title``, camelCase."""
    declared = manifest.spec.embedding
    fields: dict[str, Any] = {}
    if declared is not None and declared.task_type is not None:
        fields["taskType"] = declared.task_type
    if declared is not None and declared.dimensions is not None:
        fields["outputDimensionality"] = declared.dimensions
    return fields


def request_shape(manifest: Manifest, *, cache_digest: str = "") -> RequestShape:
    """Prefix, suffix and hash salt of a templated manifest's requests.

    ``cache_digest`` is the content hash of the cache (not its remote name), so a recreated
    cache with the same content keeps every request hash. An embedding's hash covers the
    model (salt), the text, the title, the task type and the dimensions (the request).
    """
    if manifest.spec.task == "embed":
        rest = json.dumps(embed_fields(manifest), ensure_ascii=False, separators=(",", ":"))
        return RequestShape(
            prefix=EMBED_OPEN + '{"text":',
            close="}]}",
            suffix=("," + rest[1:]) if rest != "{}" else "}",
            salt=hash_salt(manifest, cache_digest),
        )
    rest = json.dumps(request_fields(manifest), ensure_ascii=False, separators=(",", ":"))
    prefix = PARTS_OPEN + '{"text":'
    suffix = "}]}]" + ("," + rest[1:] if rest != "{}" else "}")
    return RequestShape(prefix=prefix, suffix=suffix, salt=hash_salt(manifest, cache_digest))


def hash_salt(manifest: Manifest, cache_digest: str = "") -> str:
    """What besides the request JSON shapes an answer: the model and the cache's content."""
    return f"{manifest.spec.model_id}\n{cache_digest}\n"


def request_hash(salt: str, request_json: str) -> str:
    """The content hash of one request (hex sha256); equal to DuckDB's ``sha256(salt || json)``."""
    return hashlib.sha256((salt + request_json).encode()).hexdigest()


def media_part(mime_type: str, sha256: str) -> str:
    """A ``fileData`` part naming a local file by content hash (its upload replaces it)."""
    data = {"fileData": {"mimeType": mime_type, "fileUri": MEDIA_PLACEHOLDER + sha256}}
    return json.dumps(data, separators=(",", ":")) + ","


def token_contents(request: dict[str, Any]) -> list[Any]:
    """What countTokens is asked to count for one request: its ``contents``, or an
    embedding request's single ``content``."""
    if "contents" in request:
        return list(request["contents"])
    return [request["content"]] if "content" in request else []
