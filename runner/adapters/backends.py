"""Which backend runs the batch jobs: the one choice by ``settings.backend``, made here.

``backend_for(settings)`` builds the Gemini Developer API adapter or the Vertex AI one;
``refusal(settings, manifest)`` says what of a manifest the chosen backend cannot run (for
validate, plan, apply and the daemon). Adding a backend is one adapter plus a branch in each.
Called by the CLI's ``runtime()`` and by ``runner.engine.validate``.

The adapters are imported here, when one is chosen, never at start-up: google-genai alone
takes ~0.8 s to import on 2 cores, more than a no-op re-apply of a million rows may spend
(gbatch#15), and ``status`` or ``query`` never talk to the service at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from runner.core.manifest import Manifest
from runner.core.ports import Backend
from runner.errors import GbatchError, ManifestError
from runner.settings import Settings, retry_policy

if TYPE_CHECKING:
    from runner.adapters.vertex import VertexBackend

BACKENDS = ("gemini", "vertex")


class Deferred:
    """A backend built (its SDK imported) on first use; its settings were checked already."""

    def __init__(self, build: Callable[[], Backend]) -> None:
        self._build = build
        self._built: Backend | None = None

    def __getattr__(self, name: str) -> Any:
        if self._built is None:
            self._built = self._build()
        return getattr(self._built, name)


def backend_for(settings: Settings) -> Backend:
    """The backend ``settings.backend`` names, configured from the settings.

    Raises GbatchError (with what to set) when its settings or credentials are missing.
    """
    if settings.backend == "vertex":
        return _vertex(settings)
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if not key:
        raise GbatchError(
            "no API key: set GEMINI_API_KEY (or GOOGLE_API_KEY); for the local emulator any "
            "value works"
        )
    return cast(Backend, Deferred(lambda: _gemini(settings, key)))


def _gemini(settings: Settings, key: str) -> Backend:
    from runner.adapters.gemini import GeminiBackend

    return GeminiBackend(
        api_key=key,
        base_url=settings.base_url,
        api_version=settings.api_version,
        timeout_s=settings.http_timeout_s,
        retry=retry_policy(settings),
    )


def _vertex(settings: Settings) -> VertexBackend:
    from runner.adapters import vertex

    if not settings.vertex_staging:
        raise GbatchError(
            "GBATCH_BACKEND=vertex needs GBATCH_VERTEX_STAGING=gs://bucket/prefix: the Cloud "
            "Storage place for input files, media and results"
        )
    if settings.inline_max_bytes:
        raise GbatchError(
            "GBATCH_INLINE_MAX_BYTES does not apply to Vertex AI (its batch jobs read their "
            "input from Cloud Storage only): leave it at 0 with GBATCH_BACKEND=vertex"
        )
    staging = vertex.Staging.parse(settings.vertex_staging)
    token = settings.vertex_access_token
    credentials, adc_project = vertex.credentials_from(token.get_secret_value() if token else None)
    project = settings.vertex_project or adc_project
    if not project:
        raise GbatchError(
            "GBATCH_BACKEND=vertex needs a project: set GBATCH_VERTEX_PROJECT (or "
            "GOOGLE_CLOUD_PROJECT)"
        )
    return vertex.VertexBackend(
        project=project,
        location=settings.vertex_location,
        staging=staging,
        credentials=credentials,
        base_url=settings.vertex_base_url,
        timeout_s=settings.http_timeout_s,
        retry=retry_policy(settings),
    )


def refusal(backend: str, manifest: Manifest) -> ManifestError | None:
    """What of ``manifest`` the backend named ``backend`` cannot run, or None."""
    if backend == "vertex":
        from runner.adapters import vertex

        return vertex.refusal(manifest)
    return None
