"""gbatch settings: one pydantic-settings class, read once by the CLI and passed down.

Precedence (pydantic-settings' own): init arguments > environment (``GBATCH_*``, plus the
SDK's ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY`` / ``GOOGLE_GEMINI_BASE_URL``) > ``.env`` file >
defaults. The API key is a SecretStr: it never appears in reprs, logs or the database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from runner.core.failures import RetryPolicy


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GBATCH_", env_file=".env", extra="ignore", populate_by_name=True
    )

    db: Path = Field(Path("gbatch.duckdb"), description="The results database users query.")
    state_dir: Path = Field(
        Path(".gbatch"), description="The runner's own state: bookkeeping, request sets, files."
    )
    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("GBATCH_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"),
    )
    base_url: str | None = Field(
        None, validation_alias=AliasChoices("GBATCH_BASE_URL", "GOOGLE_GEMINI_BASE_URL")
    )
    api_version: str = "v1beta"
    http_timeout_s: float = Field(120.0, gt=0, description="Per HTTP call; uploads included.")
    max_backoff_s: float = Field(
        300.0, gt=0, description="Cap on waits after 429 / 5xx (RetryInfo is honoured below it)."
    )
    read_attempts: int = Field(5, ge=1, description="Tries of a read (get, list, upload, ...).")
    retry_delay_s: float = Field(
        2.0, ge=0, description="First wait after a transient error naming none; grows per try."
    )
    adopt_grace_s: float = Field(
        300.0,
        ge=0,
        description="How long a create whose reply was lost is looked for by listing (the "
        "list may lag behind a create) before the same intent may be created again.",
    )
    max_list_pages: int = Field(
        20, ge=1, description="Pages of batches.list read per cycle (100 jobs a page)."
    )
    poll_interval_s: float = Field(30.0, gt=0, description="Between job polls while waiting.")
    max_requests_per_job: int = Field(50_000, ge=1)
    max_job_bytes: int = Field(1_900_000_000, ge=1024, description="Under the 2 GB file cap.")
    inline_max_bytes: int = Field(
        0, ge=0, description="Jobs this small (bytes) go inline instead of through a file."
    )
    max_concurrent_jobs: int = Field(100, ge=1)
    # Enqueued input tokens allowed per model (the API's batch quota), as JSON, e.g.
    # {"gemini-2.5-flash": 3000000}; models not named are not limited here.
    enqueued_tokens: dict[str, int] = Field(default_factory=dict)
    prices_file: Path | None = None
    ui_token: SecretStr | None = Field(
        None, description="GBATCH_UI_TOKEN: the status page asks callers for it off loopback."
    )
    log_format: Literal["text", "json"] = "text"
    # -- the backend: the Gemini Developer API, or Gemini on Vertex AI -------------------------
    backend: Literal["gemini", "vertex"] = Field(
        "gemini", description="Which service runs the batch jobs (runner/adapters/backends.py)."
    )
    vertex_project: str | None = Field(
        None,
        validation_alias=AliasChoices("GBATCH_VERTEX_PROJECT", "GOOGLE_CLOUD_PROJECT"),
        description="The Google Cloud project (else the one Application Default Credentials name).",
    )
    vertex_location: str = Field(
        "us-central1",
        validation_alias=AliasChoices("GBATCH_VERTEX_LOCATION", "GOOGLE_CLOUD_LOCATION"),
        description="The Vertex AI region the batch jobs run in.",
    )
    vertex_staging: str | None = Field(
        None,
        description="gs://bucket/prefix where gbatch writes input JSONL and media, and "
        "Vertex AI writes the results.",
    )
    vertex_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("GBATCH_VERTEX_BASE_URL", "GOOGLE_VERTEX_BASE_URL"),
        description="Another Vertex AI endpoint (a proxy, the emulator).",
    )
    vertex_access_token: SecretStr | None = Field(
        None,
        description="An OAuth access token to use instead of Application Default Credentials "
        "(e.g. from `gcloud auth print-access-token`; it is not refreshed).",
    )
    # -- several daemons over one shared state and one lake (#18); `pip install gbatch[team]`
    state_url: SecretStr | None = Field(
        None,
        description="postgresql://... : keep the state in Postgres, shared by several daemons "
        "(one leads); unset: SQLite under state_dir.",
    )
    lake_data_path: Path | None = Field(
        None,
        description="Where a DuckLake results database (GBATCH_DB=ducklake:...) keeps its "
        "Parquet files; a folder every host sees.",
    )
    leader_lease_s: float = Field(
        15.0,
        gt=0,
        description="A leader whose heartbeat is older than this is taken over (it stalled); "
        "one that died is taken over at once.",
    )
    lake_compact_every_s: float = Field(
        300.0, gt=0, description="At most this often, a lake's small files are merged."
    )

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.sqlite"


def retry_policy(settings: Settings) -> RetryPolicy:
    """The one retry policy, from the settings (adapter reads and engine back-off)."""
    return RetryPolicy(
        attempts=settings.read_attempts,
        first_delay_s=settings.retry_delay_s,
        max_delay_s=settings.max_backoff_s,
    )
