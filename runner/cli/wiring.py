"""Wiring shared by the commands: settings, the Runtime, the manifests a command works on.

``runtime`` builds the one Runtime of a command (state store, Gemini backend, prices); with
``need_key=False`` (``plan --no-count-tokens``, ``diff``) a backend that refuses every call
stands in, so no API key is needed and none can be used by mistake. Called by the commands.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.adapters import sources
from runner.adapters.backends import backend_for
from runner.adapters.state import StateStore
from runner.cli.exits import UsageError
from runner.core.clock import Clock, SystemClock
from runner.core.jobs import RemoteJob
from runner.core.loader import LoadedManifest
from runner.core.ports import Backend, UploadedFile
from runner.core.pricing import load_prices
from runner.engine import integrity
from runner.engine.runtime import Runtime
from runner.engine.selection import Selector
from runner.engine.validate import validate
from runner.errors import GbatchError, ManifestError, ManifestErrors, PermanentBackendError
from runner.settings import Settings

CliSettings = Settings  # the commands' settings: runner.settings.Settings, the one class


def load_settings(*, log_format: str | None) -> CliSettings:
    overrides: dict[str, Any] = {"log_format": log_format} if log_format else {}
    return CliSettings(**overrides)


def secrets(settings: CliSettings) -> list[str]:
    """What must never be printed or logged."""
    return [s.get_secret_value() for s in (settings.api_key, settings.ui_token) if s is not None]


class KeylessBackend:
    """A Backend for work that must not call the API: every call says why it cannot."""

    def __init__(self, why: str) -> None:
        self.why = why

    @property
    def api_errors(self) -> Mapping[str, int]:
        return {}

    def _refuse(self) -> GbatchError:
        return PermanentBackendError(self.why)

    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        raise self._refuse()

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        raise self._refuse()

    def file_exists(self, name: str) -> bool:
        raise self._refuse()

    def delete_file(self, name: str) -> None:
        raise self._refuse()

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        src_file: str | None,
        inline: Path | None,
        task: str = "generate",
    ) -> RemoteJob:
        raise self._refuse()

    def list_jobs(self, *, max_pages: int | None = None) -> Iterator[RemoteJob]:
        raise self._refuse()

    def get_job(self, name: str) -> RemoteJob:
        raise self._refuse()

    def cancel_job(self, name: str) -> None:
        raise self._refuse()

    def download_results(
        self, job: RemoteJob, dest: Path, *, keys: Collection[str] | None = None
    ) -> None:
        raise self._refuse()

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int:
        raise self._refuse()

    def create_cache(
        self, *, model: str, body: dict[str, Any], ttl_s: float, display_name: str
    ) -> tuple[str, str]:
        raise self._refuse()

    def find_cache(self, display_name: str) -> tuple[str, str] | None:
        raise self._refuse()

    def extend_cache(self, name: str, *, ttl_s: float) -> str:
        raise self._refuse()

    def delete_cache(self, name: str) -> None:
        raise self._refuse()


@contextmanager
def runtime(
    settings: Settings,
    *,
    work_dir: Path | None = None,
    clock: Clock | None = None,
    need_key: bool = True,
) -> Iterator[Runtime]:
    clock = clock or SystemClock()
    backend: Backend = (
        backend_for(settings)  # GBATCH_BACKEND: gemini | vertex; says what is missing
        if need_key
        else KeylessBackend("this command does not call the API")
    )
    state = StateStore(settings.state_db, clock=clock)
    try:
        yield Runtime(
            settings=settings,
            state=state,
            backend=backend,
            prices=load_prices(settings.prices_file),
            work_dir=work_dir or settings.state_dir,
            clock=clock,
        )
    finally:
        state.close()


def selector(texts: Sequence[str]) -> Selector:
    try:
        return Selector.parse(texts)
    except ValueError as exc:
        raise UsageError(f"--selector: {exc}") from None


def private(settings: Settings) -> tuple[Path, ...]:
    """gbatch's own files, which no manifest source may read."""
    return sources.private_paths(state_dir=settings.state_dir, db=settings.db)


def checked(
    paths: Sequence[Path], settings: Settings
) -> tuple[list[LoadedManifest], list[ManifestError]]:
    """Every manifest under ``paths`` that is valid, and every problem: its data (away from
    gbatch's own files) and its table name against every table the state knows."""
    loaded, errors = validate(paths, forbidden=private(settings), backend=settings.backend)
    loaded = integrity.refuse_collisions(loaded, errors, state_db=settings.state_db)
    return loaded, errors


def validated(paths: Sequence[Path], chosen: Selector, settings: Settings) -> list[LoadedManifest]:
    """Every manifest under ``paths`` that the selector picks; all must be valid."""
    loaded, errors = checked(paths, settings)
    if errors:
        raise ManifestErrors(errors)
    picked = [item for item in loaded if chosen.matches(item.manifest.metadata.labels)]
    if loaded and not picked:
        raise UsageError(f"no manifest under {', '.join(map(str, paths))} matches {chosen}")
    return picked
