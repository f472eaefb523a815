"""The ports: what the engine needs from the outside world, as Protocols.

Adapters implement them (``runner.adapters.gemini.GeminiBackend``); tests pass fakes
(``tests/fakes.py``). The backend is split by concern: files, jobs, caches, models.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runner.core.jobs import RemoteJob


@dataclass(frozen=True)
class UploadedFile:
    """A file the Files API holds for us: it is deleted by the service at ``expire_time``."""

    name: str  # files/...
    uri: str
    expire_time: str  # RFC 3339, from the File's expirationTime
    size: int = 0


class Files(Protocol):
    """Uploads the service holds for us (the Files API, or a bucket)."""

    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        """Upload a request file."""
        ...

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        """Upload a media file (used once it is ACTIVE)."""
        ...

    def file_exists(self, name: str) -> bool:
        """Whether an uploaded file (``files/...``) still exists."""
        ...

    def delete_file(self, name: str) -> None:
        """Delete an uploaded file; one already gone is not an error."""
        ...


class Jobs(Protocol):
    """Batch jobs: created once per intent, listed, followed, cancelled, downloaded."""

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        src_file: str | None,
        inline: Path | None,
        task: str = "generate",
    ) -> RemoteJob:
        """Create a batch job from an uploaded file or from a small local JSONL sent inline.

        ``task``: ``generate`` (GenerateContent requests) or ``embed`` (EmbedContent
        requests: an embeddings batch). Never retried here: an unclear outcome raises
        UnclearCreateError.
        """
        ...

    def list_jobs(self, *, max_pages: int | None = None) -> Iterator[RemoteJob]:
        """Jobs, newest first, page by page."""
        ...

    def get_job(self, name: str) -> RemoteJob: ...

    def cancel_job(self, name: str) -> None: ...

    def download_results(
        self, job: RemoteJob, dest: Path, *, keys: Collection[str] | None = None
    ) -> None:
        """Write the job's result lines (``{"key", "response"|"error"}``) to ``dest``.

        ``keys``: an inline job's keys, to match answers that come back without metadata.
        Raises ResultsMismatchError (raw output kept beside ``dest``) when they can't be.
        """
        ...


class Caches(Protocol):
    """Context caches (explicit caching); a backend without them refuses in ``create_cache``."""

    def create_cache(
        self, *, model: str, body: dict[str, Any], ttl_s: float, display_name: str
    ) -> tuple[str, str]:
        """Create a context cache; (name, expire time). Not retried: UnclearCreateError."""
        ...

    def find_cache(self, display_name: str) -> tuple[str, str] | None:
        """A live cache by display name: (name, expire time)."""
        ...

    def extend_cache(self, name: str, *, ttl_s: float) -> str:
        """Set the TTL from now; the new expire time."""
        ...

    def delete_cache(self, name: str) -> None: ...


class Models(Protocol):
    """What the planner asks of a model before anything is sent."""

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int: ...


class Backend(Files, Jobs, Caches, Models, Protocol):
    """A batch service, by concern; the engine's modules each use the part they need.

    Implemented by ``runner.adapters.gemini.GeminiBackend``; a new service is one adapter
    implementing these, which owns its wire format (its input lines, and its result lines
    normalised to ``{"key", "response" | "error"}``).
    """

    @property
    def api_errors(self) -> Mapping[str, int]:
        """Errors seen so far, by HTTP code or status (for metrics)."""
        ...
