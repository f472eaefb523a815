"""The manifest model: what a user declares in YAML, validated strictly by pydantic.

Two shapes are accepted (see ``runner.core.loader``): the full envelope
(``apiVersion`` / ``kind`` / ``metadata`` / ``spec``) and a short form whose top level is the
spec itself plus an optional ``name`` (so the seed's JSONL needs a three-line manifest).
Called by the loader (parsing), the data plane (sources, requests, results) and the engine.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runner.core.durations import parse_duration

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
TABLE_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
API_VERSION = "gbatch/v1"
DEFAULT_QUERY_TIMEOUT = "5m"  # a query source still running after this is stopped


class Strict(BaseModel):
    """Base for manifest sections: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Unique manifest name; default table.")
    labels: dict[str, str] = Field(default_factory=dict)


class Source(Strict):
    """Where the rows come from. Exactly one of path / requests / query / rows."""

    path: str | None = Field(None, description="csv, jsonl or parquet file or glob, relative.")
    format: Literal["csv", "jsonl", "parquet"] | None = Field(
        None, description="Format of `path`; inferred from the extension when omitted."
    )
    requests: str | None = Field(
        None, description='Ready {"key","request"} JSONL, passed through as-is.'
    )
    query: str | None = Field(None, description="DuckDB SQL over local files (locked down).")
    rows: list[dict[str, Any]] | None = Field(None, description="Inline rows.")
    key: str | None = Field(None, description="Column that keys each request; else a row hash.")
    # How long a query may run: operational, not part of what the manifest asks for, so it
    # is left out of the digest (changing it makes no new version).
    timeout: str = Field(
        DEFAULT_QUERY_TIMEOUT,
        exclude=True,
        description="How long a `query` may run before it is stopped (90s, 15m, 1h).",
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
    system: str | None = None
    template: str = Field(description="Text with {{ column }} placeholders.")
    media: list[str] = Field(
        default_factory=list,
        description="Columns holding paths of local files (image, PDF, audio, video) to send "
        "with each row's prompt; each distinct file is uploaded once.",
    )


class Generation(Strict):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    stop_sequences: list[str] | None = None
    seed: int | None = None
    thinking_budget: int | None = Field(None, ge=-1)


class Cache(Strict):
    """Shared context cached once and referenced by every request."""

    files: list[str] = Field(default_factory=list)
    text: str | None = None
    system: str | None = None
    ttl: str = "48h"

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        parse_duration(value)
        return value


class Tools(Strict):
    google_search: bool = False
    url_context: bool = False
    code_execution: bool = False
    functions: list[dict[str, Any]] = Field(default_factory=list)


class Output(Strict):
    table: str | None = Field(None, pattern=TABLE_PATTERN)
    # When an output_schema change gives an existing column another type: widen it to text
    # (both versions' values stay in one table), or move the old tables aside and start anew.
    on_schema_change: Literal["add_columns", "new_table"] = "add_columns"


class Policy(Strict):
    on_delete: Literal["keep", "cancel"] = "keep"
    on_change: Literal["finish", "cancel"] = "finish"
    max_cost_usd: float | None = Field(None, gt=0)
    max_requests_per_job: int | None = Field(None, ge=1)
    retries: int = Field(2, ge=0, le=10)
    deadline: str = "36h"  # a job pending or running longer is cancelled and resubmitted
    reuse_answers: bool = True  # copy answers of identical requests instead of paying again

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: str) -> str:
        parse_duration(value)
        return value


class Spec(Strict):
    model: str = Field(pattern=r"^(models/)?[a-z0-9][a-z0-9.\-]*$")
    source: Source
    prompt: Prompt | None = None
    generation: Generation = Generation()
    output_schema: dict[str, Any] | None = None
    cache: Cache | None = None
    tools: Tools = Tools()
    output: Output = Output()
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _prompt_needed(self) -> Spec:
        if self.source.requests is None and self.prompt is None:
            raise ValueError("prompt.template is required unless source.requests is used")
        if self.source.requests is not None and self.prompt is not None:
            raise ValueError("prompt does not apply to source.requests: lines are sent as-is")
        if self.output_schema is not None and self.output_schema.get("type") != "object":
            raise ValueError("output_schema must be a JSON Schema with type: object")
        return self

    @property
    def model_id(self) -> str:
        """The model without the ``models/`` prefix (what prices and tables use)."""
        return self.model.removeprefix("models/")


class Manifest(Strict):
    api_version: Literal["gbatch/v1"] = Field("gbatch/v1", alias="apiVersion")
    kind: Literal["Batch"] = "Batch"
    metadata: Metadata
    spec: Spec

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def table(self) -> str:
        """The results table: declared, else the name with dashes made underscores."""
        return self.spec.output.table or re.sub(r"[^a-z0-9_]", "_", self.metadata.name)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the full manifest form, for editors (``gbatch schema``)."""
    return Manifest.model_json_schema(by_alias=True)


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
