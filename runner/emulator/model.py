"""The emulator's deterministic model: answers derived from the request, never random.

Plain prompts are echoed ("echo: <prompt>"); a response schema gets JSON that validates
against it, derived from the prompt; Google Search adds grounding metadata; usage counts
come from one token estimate shared with countTokens. An embedding request gets a unit vector
hashed from its words and their trigrams (``embed``): the same text always gets the same
vector, and texts that share words lie closer than texts that share none. Called by the
emulator's batch processing and countTokens handler.

Shapes follow the recorded replies in tests/fixtures/recorded/ (see its README):
``modelVersion`` is the model id as given (``gemini-2.5-flash``, no ``-001``), usage carries
``promptTokensDetails`` (and ``cacheTokensDetails`` on a cache hit), and a line's error is a
``google.rpc.Status`` with a gRPC code and no ``status`` string.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

# google.rpc.Code numbers: a failed line's ``error`` is a google.rpc.Status, whose ``code`` is
# one of these (the batch-mode docs and the SDK's JobError), not an HTTP status.
GRPC_CODES = {
    "CANCELLED": 1,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}


class LineError(Exception):
    """A request line the service rejects; becomes that line's ``error``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def as_json(self) -> dict[str, Any]:
        return line_error(self.status, self.message)


def line_error(status: str, message: str) -> dict[str, Any]:
    """A line's ``error`` as the service writes it: a google.rpc.Status without ``status``."""
    return {"code": GRPC_CODES[status], "message": message}


@dataclass(frozen=True)
class CacheView:
    """What a request's cachedContent brings: its text, token count and tools."""

    name: str
    text: str
    tokens: int
    tools: tuple[Any, ...] = ()


def count_tokens(text: str) -> int:
    """The emulator's tokenizer: a quarter of the characters, rounded up."""
    return math.ceil(len(text) / 4) if text else 0


def contents_text(contents: Any) -> str:
    """All text parts of a contents list, joined by newlines."""
    texts: list[str] = []
    for content in contents if isinstance(contents, list) else []:
        for part in content.get("parts", []) if isinstance(content, dict) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return "\n".join(texts)


def _get(mapping: dict[str, Any], camel: str) -> Any:
    """A field in camelCase or snake_case (the SDK sends both)."""
    if camel in mapping:
        return mapping[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return mapping.get(snake)


def _digest(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12], 16)


def value_for(schema: Any, seed: str, path: str = "$") -> Any:
    """A deterministic value valid for a JSON Schema / OpenAPI schema subset."""
    if not isinstance(schema, dict):
        return seed
    for combinator in ("anyOf", "oneOf", "any_of"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return value_for((non_null or options)[0], seed, path)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][_digest(seed, path) % len(schema["enum"])]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind or ("object" if "properties" in schema else "string")).lower()
    h = _digest(seed, path)
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: value_for(sub, seed, f"{path}.{name}") for name, sub in props.items()}
    if kind == "array":
        items = schema.get("items", {"type": "string"})
        return [value_for(items, seed, f"{path}[{i}]") for i in range(2)]
    if kind == "integer":
        return h % 100
    if kind == "number":
        return round((h % 10_000) / 100, 2)
    if kind == "boolean":
        return h % 2 == 0
    if kind == "null":
        return None
    words = seed.split()[:6] or ["answer"]
    return f"{' '.join(words)} #{h % 1000}"


def answer(request: Any, *, model: str, cache: CacheView | None) -> dict[str, Any]:
    """The GenerateContentResponse for one request, or LineError when it is invalid."""
    if not isinstance(request, dict):
        raise LineError("INVALID_ARGUMENT", "request must be an object")
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise LineError("INVALID_ARGUMENT", "contents is required")
    config = _get(request, "generationConfig") or {}
    if not isinstance(config, dict):
        raise LineError("INVALID_ARGUMENT", "generationConfig must be an object")
    if _get(config, "cachedContent") is not None:
        raise LineError(
            "INVALID_ARGUMENT",
            'Invalid JSON payload: unknown name "cachedContent" in generationConfig',
        )
    if _get(request, "cachedContent") is not None and (
        _get(request, "systemInstruction") is not None or _get(request, "tools") is not None
    ):
        raise LineError(
            "INVALID_ARGUMENT",
            "CachedContent can not be used with "
            "GenerateContent request setting system_instruction, tools or tool_config",
        )
    last_user = [c for c in contents if isinstance(c, dict)][-1:]
    prompt = contents_text(last_user)
    all_prompt = contents_text(contents) + contents_text([_get(request, "systemInstruction") or {}])
    schema = _get(config, "responseJsonSchema") or _get(config, "responseSchema")
    if schema is not None:
        text = json.dumps(value_for(schema, prompt), ensure_ascii=False)
    else:
        text = f"echo: {prompt}"
    tools = [*(_get(request, "tools") or []), *(cache.tools if cache else ())]
    search = any(isinstance(t, dict) and (_get(t, "googleSearch") is not None) for t in tools)
    thinking = _get(config, "thinkingConfig") or {}
    budget = _get(thinking, "thinkingBudget") if isinstance(thinking, dict) else None
    cached = cache.tokens if cache else 0
    prompt_tokens = count_tokens(all_prompt) + cached
    output_tokens = count_tokens(text)
    thoughts = 0 if budget == 0 else 8 + _digest(prompt) % 24
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "finishReason": "STOP",
        "index": 0,
    }
    usage: dict[str, Any] = {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": output_tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    if search:
        candidate["groundingMetadata"] = _grounding(prompt, text)
        usage["toolUsePromptTokenCount"] = 12
    usage["totalTokenCount"] = sum(
        usage.get(k, 0)
        for k in (
            "promptTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
            "toolUsePromptTokenCount",
        )
    )
    return {
        "candidates": [candidate],
        "usageMetadata": usage,
        "modelVersion": model.removeprefix("models/"),
        "responseId": _response_id(model, all_prompt),
    }


def _response_id(*parts: str) -> str:
    """23 URL-safe base64 characters, as recorded ids are (``6VFkaIDwEPXVjMcP4-XW6Qo``)."""
    raw = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return base64.urlsafe_b64encode(raw).decode()[:23]


def _grounding(prompt: str, text: str) -> dict[str, Any]:
    slug = "-".join(prompt.lower().split()[:4]) or "query"
    end = min(len(text), 40)
    return {
        "webSearchQueries": [prompt[:80] or "query"],
        "searchEntryPoint": {"renderedContent": "<div>search</div>"},
        "groundingChunks": [
            {"web": {"uri": f"https://example.com/{slug}", "title": f"About {slug}"}},
            {"web": {"uri": f"https://example.org/{slug}", "title": f"More on {slug}"}},
        ],
        "groundingSupports": [
            {
                "segment": {"startIndex": 0, "endIndex": end, "text": text[:end]},
                "groundingChunkIndices": [0, 1],
            },
        ],
    }


# -- embeddings --------------------------------------------------------------------------
# EmbedContentRequest.taskType values the service accepts (ai.google.dev/api/embeddings).
TASK_TYPES = frozenset(
    {
        "TASK_TYPE_UNSPECIFIED",
        "RETRIEVAL_QUERY",
        "RETRIEVAL_DOCUMENT",
        "SEMANTIC_SIMILARITY",
        "CLASSIFICATION",
        "CLUSTERING",
        "QUESTION_ANSWERING",
        "FACT_VERIFICATION",
        "CODE_RETRIEVAL_QUERY",
    }
)
# The size of a vector when the request names none, and the largest asked for ("supports
# 128 - 3072", the models page; the older text models return 768).
EMBEDDING_SIZES = {"gemini-embedding-001": 3072, "gemini-embedding-2": 3072}
DEFAULT_EMBEDDING_SIZE = 768
MAX_EMBEDDING_SIZE = 3072


def is_embedding_model(model: str) -> bool:
    """Whether ``model`` makes embeddings (and so refuses batchGenerateContent)."""
    return "embedding" in model.removeprefix("models/")


def _features(text: str) -> dict[str, float]:
    """What a vector is made of: each word (weight 1) and each of its trigrams (0.5)."""
    weights: dict[str, float] = {}
    for word in re.findall(r"\w+", text.lower()):
        weights[f"w:{word}"] = weights.get(f"w:{word}", 0.0) + 1.0
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            gram = f"g:{padded[i : i + 3]}"
            weights[gram] = weights.get(gram, 0.0) + 0.5
    return weights


def embedding_values(text: str, size: int) -> list[float]:
    """A unit vector of ``size`` for ``text``: every feature hashed to a signed position."""
    vector = [0.0] * size
    for feature, weight in _features(text).items():
        h = _digest(feature)
        vector[h % size] += weight if (h >> 40) & 1 else -weight
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    # as recorded lines print them: float32 precision (-0.034119852)
    return [float(f"{v / norm:.8g}") for v in vector]


def embed(request: Any, *, model: str) -> dict[str, Any]:
    """The EmbedContentResponse of one batch line, as recorded (Cookbook Batch_mode.ipynb cell
    48: ``{"tokenCount": "1", "embedding": {"values": [...]}}``), or LineError."""
    if not isinstance(request, dict):
        raise LineError("INVALID_ARGUMENT", "request must be an object")
    if "contents" in request:
        raise LineError(
            "INVALID_ARGUMENT",
            'Invalid JSON payload received. Unknown name "contents": an embedding request '
            "has one content",
        )
    content = request.get("content")
    text = contents_text([content]) if isinstance(content, dict) else ""
    if not text.strip():
        raise LineError("INVALID_ARGUMENT", "The text content is empty.")
    task_type = _get(request, "taskType")
    if task_type is not None and task_type not in TASK_TYPES:
        raise LineError("INVALID_ARGUMENT", f"Invalid value at 'task_type': {task_type!r}")
    model_id = model.removeprefix("models/")
    size = _get(request, "outputDimensionality")
    if size is None:
        size = next(
            (n for key, n in EMBEDDING_SIZES.items() if model_id.startswith(key)),
            DEFAULT_EMBEDDING_SIZE,
        )
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_EMBEDDING_SIZE:
        raise LineError(
            "INVALID_ARGUMENT",
            f"output_dimensionality must be between 1 and {MAX_EMBEDDING_SIZE}, got {size!r}",
        )
    title = _get(request, "title")
    embedded = f"{title}\n{text}" if isinstance(title, str) and title else text
    return {
        "tokenCount": str(count_tokens(embedded)),  # int64: a string on the wire (recorded)
        "embedding": {"values": embedding_values(embedded, size)},
    }
