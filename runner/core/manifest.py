"""The manifest model: what a user declares in YAML, validated strictly by pydantic.

Two shapes are accepted (see ``runner.core.loader``): the full envelope
(``apiVersion`` / ``kind`` / ``metadata`` / ``spec``) and a short form whose top level is the
spec itself plus an optional ``name`` (so the seed's JSONL needs a three-line manifest).
``task`` says what the rows become: ``generate`` (batchGenerateContent, the default) or
``embed`` (asyncBatchEmbedContent: one vector per row, settings in the ``embedding`` block).
Called by the loader (parsing), the data plane (sources, requests, results) and the engine.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from runner.core.durations import parse_duration

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TABLE_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
API_VERSION = "gbatch/v1"
DEFAULT_QUERY_TIMEOUT = "5m"  # a query source still running after this is stopped


class Strict(BaseModel):
    """Base for manifest sections: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(Strict):
    """Who the manifest is: its name and labels."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Unique manifest name (lower case, digits, - and _); the default table "
        "name, with - made _. In the short form it defaults to the file name.",
        examples=["product-copy"],
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form labels, kept with the manifest.",
        examples=[{"team": "catalog"}],
    )


class Source(Strict):
    """Where the rows come from. Exactly one of path / requests / query / rows."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "oneOf": [{"required": [k]} for k in ("path", "requests", "query", "rows")]
        },
    )

    path: str | None = Field(
        None,
        description="A csv, jsonl or parquet file, or a glob of them, relative to the manifest "
        "and inside its folder.",
        examples=["data/products.csv", "data/*.parquet"],
    )
    format: Literal["csv", "jsonl", "parquet"] | None = Field(
        None,
        description="Format of `path`; inferred from the extension when omitted.",
        examples=["csv"],
    )
    requests: str | None = Field(
        None,
        description='A ready JSONL file of {"key", "request"} lines, sent as they are '
        "(no prompt, no key).",
        examples=["data/batch_requests.jsonl"],
    )
    query: str | None = Field(
        None,
        description="One DuckDB SELECT over files under the manifest's folder, run in a "
        "locked-down process (no writes, no network, no gbatch files).",
        examples=["select * from read_parquet('data/*.parquet') where lang = 'en'"],
    )
    rows: list[dict[str, Any]] | None = Field(
        None, description="Rows written inline.", examples=[[{"name": "Ada"}, {"name": "Bo"}]]
    )
    key: str | None = Field(
        None,
        description="Column that keys each request (unique per row); else a hash of the row.",
        examples=["sku"],
    )
    # How long a query may run: operational, not part of what the manifest asks for, so it
    # is left out of the digest (changing it makes no new version).
    timeout: str = Field(
        DEFAULT_QUERY_TIMEOUT,
        exclude=True,
        description="How long a `query` may run before it is stopped (90s, 15m, 1h).",
        examples=["15m"],
    )

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        if parse_duration(value) <= 0:
            raise ValueError("timeout must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        given = [f for f in ("path", "requests", "query", "rows") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(
                "exactly one of path, requests, query, rows is required"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.requests is not None and self.key is not None:
            raise ValueError("key does not apply to requests: their lines carry their own key")
        if self.format is not None and self.path is None:
            raise ValueError("format applies only to path")
        if "timeout" in self.model_fields_set and self.query is None:
            raise ValueError("timeout applies only to query")
        return self

    @property
    def timeout_s(self) -> float:
        return parse_duration(self.timeout)

    @property
    def kind(self) -> Literal["path", "requests", "query", "rows"]:
        for kind in ("path", "requests", "query", "rows"):
            if getattr(self, kind) is not None:
                return kind
        raise AssertionError("validated source has one kind")


class Prompt(Strict):
    """What each row asks."""

    system: str | None = Field(
        None,
        description="The system instruction sent with every request.",
        examples=["You write short, factual product copy."],
    )
    template: str = Field(
        description='The prompt: text with {{ column }} placeholders ({{ "odd name" }} for '
        "names that are not identifiers); a NULL renders empty.",
        examples=["Describe {{ name }} ({{ category }}) in 40 words."],
    )
    media: list[str] = Field(
        default_factory=list,
        description="Columns holding paths of local files (image, PDF, audio, video) to send "
        "with each row's prompt; each distinct file is uploaded once.",
        examples=[["photo"]],
    )


class Generation(Strict):
    """The model's generation settings (generationConfig)."""

    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature, 0 to 2.", examples=[0.2]
    )
    top_p: float | None = Field(
        None, ge=0, le=1, description="Nucleus sampling probability, 0 to 1.", examples=[0.95]
    )
    top_k: int | None = Field(
        None, ge=1, description="Sample from the k most likely tokens.", examples=[40]
    )
    max_output_tokens: int | None = Field(
        None, ge=1, description="Cap on the answer's tokens.", examples=[256]
    )
    stop_sequences: list[str] | None = Field(
        None, description="Text that ends the answer where it appears.", examples=[["\n\n"]]
    )
    seed: int | None = Field(None, description="Seed for repeatable sampling.", examples=[7])
    thinking_budget: int | None = Field(
        None,
        ge=-1,
        description="Thinking tokens allowed (0 off, -1 the model decides).",
        examples=[1024],
    )


class Cache(Strict):
    """Shared context cached once and referenced by every request."""

    files: list[str] = Field(
        default_factory=list,
        description="Text files (or globs) under the manifest's folder to put in the cache.",
        examples=[["docs/style-guide.md"]],
    )
    text: str | None = Field(
        None, description="Text to put in the cache.", examples=["House style: ..."]
    )
    system: str | None = Field(
        None,
        description="A system instruction held in the cache.",
        examples=["You follow the style guide."],
    )
    ttl: str = Field(
        "48h",
        description="How long the cache lives; extended while jobs still need it.",
        examples=["48h"],
    )

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        parse_duration(value)
        return value


class Tools(Strict):
    """Tools the model may use."""

    google_search: bool = Field(
        False, description="Ground answers with Google Search.", examples=[True]
    )
    url_context: bool = Field(False, description="Let the model read URLs.", examples=[True])
    code_execution: bool = Field(
        False, description="Let the model run code it writes.", examples=[True]
    )
    functions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Function declarations; an answer that calls one has no text, the calls "
        "are in its response.",
        examples=[[{"name": "lookup", "parameters": {"type": "object"}}]],
    )


class Output(Strict):
    """Where the answers go."""

    table: str | None = Field(
        None,
        pattern=TABLE_PATTERN,
        description="The results table; default: the name with - made _.",
        examples=["product_copy"],
    )
    # When an output_schema change gives an existing column another type: widen it to text
    # (both versions' values stay in one table), or move the old tables aside and start anew.
    on_schema_change: Literal["add_columns", "new_table"] = Field(
        "add_columns",
        description="When a new output_schema gives a column another type: widen it to text "
        "(add_columns) or move the old tables aside (new_table).",
        examples=["new_table"],
    )


class Policy(Strict):
    """What gbatch may do on its own: spend, retry, cancel."""

    on_delete: Literal["keep", "cancel"] = Field(
        "keep",
        description="When the manifest is deleted: let its running jobs finish, or cancel them.",
        examples=["cancel"],
    )
    on_change: Literal["finish", "cancel"] = Field(
        "finish",
        description="When the manifest changes: let the old version's jobs finish, or cancel.",
        examples=["cancel"],
    )
    max_cost_usd: float | None = Field(
        None,
        gt=0,
        description="Nothing is submitted when the estimate plus what was spent exceeds it.",
        examples=[20],
    )
    max_requests_per_job: int | None = Field(
        None, ge=1, description="Split bigger request sets into several jobs.", examples=[50000]
    )
    retries: int = Field(
        2, ge=0, le=10, description="Times a failed request is sent again.", examples=[2]
    )
    deadline: str = Field(
        "36h",
        description="A job pending or running longer is cancelled and its requests resubmitted.",
        examples=["36h"],
    )
    reuse_answers: bool = Field(
        True,
        description="Copy the answer of an identical request sent before instead of paying again.",
        examples=[False],
    )

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: str) -> str:
        parse_duration(value)
        return value


# The task types of EmbedContentRequest (ai.google.dev/api/embeddings#tasktype).
TaskType = Literal[
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "RETRIEVAL_DOCUMENT",
    "RETRIEVAL_QUERY",
    "CODE_RETRIEVAL_QUERY",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
]
# The vector size a model returns when the request names none (the models page: "Output
# dimension size: flexible, supports 128 - 3072, recommended 768, 1536, 3072", default 3072
# for gemini-embedding-001; gemini-embedding-2 likewise; 768 for the older text models).
# Matched like prices: exact id, else the longest key that is a prefix of it.
EMBEDDING_DEFAULT_DIMENSIONS = {
    "gemini-embedding-001": 3072,
    "gemini-embedding-2": 3072,
    "text-embedding-004": 768,
    "embedding-001": 768,
}
MAX_DIMENSIONS = 65_536  # far above any model's; keeps a typo from making a huge column
EMBED_ONLY_TEXT = "does not apply to task: embed (one vector per row, from the template's text)"
_UNKNOWN_SIZE = "the default vector size of {model} is not known: set embedding.dimensions"


def default_dimensions(model: str) -> int | None:
    """The vector size ``model`` returns by default; None when it is not known."""
    model = model.removeprefix("models/")
    found = [key for key in EMBEDDING_DEFAULT_DIMENSIONS if model.startswith(key)]
    return EMBEDDING_DEFAULT_DIMENSIONS[max(found, key=len)] if found else None


class Embedding(Strict):
    """How each row is embedded (``task: embed``); the prompt template is the text."""

    dimensions: int | None = Field(
        None,
        ge=1,
        le=MAX_DIMENSIONS,
        description="Size of each vector (outputDimensionality); the results column is "
        "FLOAT[dimensions]. Default: the model's own size (3072 for gemini-embedding-001).",
        examples=[768],
    )
    task_type: TaskType | None = Field(
        None,
        description="What the vectors are for (taskType): RETRIEVAL_DOCUMENT for what is "
        "searched, RETRIEVAL_QUERY for the questions, SEMANTIC_SIMILARITY, CLASSIFICATION, "
        "CLUSTERING, ...",
        examples=["RETRIEVAL_DOCUMENT"],
    )
    title_column: str | None = Field(
        None,
        description="Source column holding each row's title (sent as title; only with "
        "task_type RETRIEVAL_DOCUMENT). A NULL title is left out.",
        examples=["question"],
    )

    @model_validator(mode="after")
    def _title_needs_documents(self) -> Embedding:
        if self.title_column is not None and self.task_type != "RETRIEVAL_DOCUMENT":
            raise ValueError(
                "title_column applies only to task_type RETRIEVAL_DOCUMENT (the API reads a "
                "title for documents only)"
            )
        return self


class Spec(Strict):
    """What to run: the model, the rows and how each becomes a request."""

    # ``task`` comes first: the fields after it are checked against it, each where written.
    task: Literal["generate", "embed"] = Field(
        "generate",
        description="What each row becomes: an answer (generate, batchGenerateContent) or a "
        "vector (embed, asyncBatchEmbedContent, into a FLOAT[N] column `embedding`).",
        examples=["embed"],
    )
    model: str = Field(
        pattern=r"^(models/)?[a-z0-9][a-z0-9.\-]*$",
        description="The Gemini model.",
        examples=["gemini-2.5-flash"],
    )
    source: Source = Field(
        description="Where the rows come from: exactly one of path, requests, query, rows.",
        examples=[{"path": "data/products.csv", "key": "sku"}],
    )
    prompt: Prompt | None = Field(
        None,
        description="What each row asks; required unless source.requests is used.",
        examples=[{"template": "Describe {{ name }} in 40 words."}],
    )
    generation: Generation = Field(
        Generation(),
        description="Generation settings.",
        examples=[{"temperature": 0.2, "max_output_tokens": 256}],
    )
    embedding: Embedding | None = Field(
        None,
        description="Embedding settings (task: embed): vector size, task type, title column.",
        examples=[{"dimensions": 768, "task_type": "RETRIEVAL_DOCUMENT"}],
    )
    output_schema: dict[str, Any] | None = Field(
        None,
        description="A JSON Schema (type: object) the answer must follow; each top-level "
        "property becomes a typed column.",
        examples=[{"type": "object", "properties": {"title": {"type": "string"}}}],
    )
    cache: Cache | None = Field(
        None,
        description="Shared context cached once and named by every request.",
        examples=[{"files": ["docs/style-guide.md"], "ttl": "48h"}],
    )
    tools: Tools = Field(
        Tools(),
        description="Search, URL reading, code execution and functions.",
        examples=[{"google_search": True}],
    )
    output: Output = Field(
        Output(),
        description="The results table and how schema changes are handled.",
        examples=[{"table": "product_copy"}],
    )
    policy: Policy = Field(
        Policy(),
        description="Spending, retries and cancelling.",
        examples=[{"max_cost_usd": 5, "retries": 2}],
    )

    @model_validator(mode="after")
    def _prompt_needed(self) -> Spec:
        if self.source.requests is None and self.prompt is None:
            raise ValueError("prompt.template is required unless source.requests is used")
        if self.source.requests is not None and self.prompt is not None:
            raise ValueError("prompt does not apply to source.requests: lines are sent as-is")
        if self.output_schema is not None and self.output_schema.get("type") != "object":
            raise ValueError("output_schema must be a JSON Schema with type: object")
        return self

    @field_validator("model")
    @classmethod
    def _model_fits_task(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("task") == "generate" and "embedding" in value:
            raise ValueError(
                f"{value.removeprefix('models/')} is an embedding model: add task: embed to "
                "get vectors"
            )
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_fits_task(cls, value: Prompt | None, info: ValidationInfo) -> Prompt | None:
        if info.data.get("task") == "embed" and value is not None:
            for name in ("system", "media"):
                if getattr(value, name):
                    raise ValueError(f"{name} {EMBED_ONLY_TEXT}")
        return value

    # Validated only when written: a generation setting written for an embedding is an error.
    @field_validator("generation", "output_schema", "cache", "tools")
    @classmethod
    def _generation_only(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("task") == "embed":
            raise ValueError(EMBED_ONLY_TEXT)
        return value

    @field_validator("embedding")
    @classmethod
    def _embedding_fits(cls, value: Embedding | None, info: ValidationInfo) -> Embedding | None:
        if value is None:
            return value
        if info.data.get("task") != "embed":
            raise ValueError("embedding applies only to task: embed")
        source = info.data.get("source")
        if value.title_column is not None and source is not None and source.requests is not None:
            raise ValueError("title_column does not apply to source.requests: lines are sent as-is")
        model = info.data.get("model")
        if value.dimensions is None and model is not None and default_dimensions(model) is None:
            raise ValueError(_UNKNOWN_SIZE.format(model=model.removeprefix("models/")))
        return value

    @model_validator(mode="after")
    def _size_known(self) -> Spec:
        if self.task == "embed" and self.dimensions is None:
            raise ValueError(_UNKNOWN_SIZE.format(model=self.model_id))
        return self

    # A generation manifest dumps (and so digests) as it did before ``task`` existed: adding
    # the embedding fields must not make every existing manifest a new version.
    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict) and self.task == "generate":
            data.pop("task", None)
            data.pop("embedding", None)
        return data

    @property
    def dimensions(self) -> int | None:
        """The embedding's vector size: declared, else the model's default (``task: embed``)."""
        if self.task != "embed":
            return None
        declared = self.embedding.dimensions if self.embedding else None
        return declared or default_dimensions(self.model_id)

    @property
    def model_id(self) -> str:
        """The model without the ``models/`` prefix (what prices and tables use)."""
        return self.model.removeprefix("models/")


class Manifest(Strict):
    """A gbatch manifest in its full form."""

    api_version: Literal["gbatch/v1"] = Field(
        "gbatch/v1",
        alias="apiVersion",
        description="The manifest format's version.",
        examples=["gbatch/v1"],
    )
    kind: Literal["Batch"] = Field("Batch", description="What it declares.", examples=["Batch"])
    metadata: Metadata = Field(
        description="Name and labels.",
        examples=[{"name": "product-copy", "labels": {"team": "catalog"}}],
    )
    spec: Spec = Field(
        description="What to run.",
        examples=[
            {
                "model": "gemini-2.5-flash",
                "source": {"requests": "data/batch_requests.jsonl"},
            }
        ],
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def table(self) -> str:
        """The results table: declared, else the name with dashes made underscores."""
        return self.spec.output.table or re.sub(r"[^a-z0-9_]", "_", self.metadata.name)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a manifest document, both forms, for editors (``gbatch schema``).

    The short form is the spec's fields at the top level plus the metadata's (see
    ``runner.core.loader``), so it is derived from the same models: one definition.
    """
    full = Manifest.model_json_schema(by_alias=True)
    defs = full.pop("$defs")
    spec, metadata = defs["Spec"], defs["Metadata"]["properties"]
    short = {
        "title": "Manifest (short form)",
        "description": "The spec's fields at the top level, with an optional name and labels.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": metadata["name"],
            "labels": metadata["labels"],
            **spec["properties"],
        },
        "required": spec["required"],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gbatch manifest",
        "description": "One YAML document: the full form (apiVersion, kind, metadata, spec) "
        "or the short form (the spec's fields at the top level).",
        "anyOf": [dict(full, title="Manifest (full form)"), short],
        "$defs": defs,
    }


RESERVED_COLUMNS = (
    "key",
    "status",
    "text",
    "response",
    "error",
    "finish_reason",
    "prompt_tokens",
    "cached_tokens",
    "output_tokens",
    "thoughts_tokens",
    "total_tokens",
    "cost_usd",
    "model_version",
    "job",
    "manifest",
    "manifest_version",
    "commit",
    "request_hash",
    "ingested_at",
    "request",
    "request_bytes",
    "row_number",
)
