"""The ports: what the engine needs from the outside world, as Protocols.

Adapters implement them (``runner.adapters.gemini.GeminiBackend``); tests may pass fakes.
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


class Backend(Protocol):
    """The Gemini Batch API, reduced to the calls gbatch makes."""

    @property
    def api_errors(self) -> Mapping[str, int]:
        """Errors seen so far, by HTTP code or status (for metrics)."""
        ...

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

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int: ...

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
