"""What the two google-genai adapters share: a raw call through the SDK's client, reads
retried with back-off, and errors counted for the metrics endpoint.

Each adapter says how its exceptions become gbatch errors (``translate``: the one place per
service). Base of ``runner.adapters.gemini.GeminiBackend`` and
``runner.adapters.vertex.VertexBackend``; imports no Google library itself.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from runner.core import failures
from runner.errors import BackendError, TransientBackendError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Translate(Protocol):
    def __call__(self, exc: Exception, what: str, *, base_url: str) -> BackendError: ...


class SdkCalls:
    """The plumbing under a google-genai adapter; ``client`` is its ``genai.Client``."""

    def __init__(
        self,
        client: Any,
        *,
        retry: failures.RetryPolicy | None,
        sleep: Callable[[float], None],
        translate: Translate,
    ) -> None:
        self._client = client
        # Named in connection errors: the SDK's resolved one (argument, env var or Google's).
        self.base_url = str(client._api_client._http_options.base_url or "").rstrip("/")
        self._retry = retry or failures.RetryPolicy()
        self._sleep = sleep
        self._translate = translate
        self.api_errors: Counter[str] = Counter()  # read by the metrics endpoint

    def _raw(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call through the SDK's client (its auth, base URL, version and timeout)."""
        reply = self._client._api_client.request(method, path, body or {})
        parsed = json.loads(reply.body) if reply.body else {}
        if not isinstance(parsed, dict):
            raise json.JSONDecodeError("not a JSON object", str(reply.body)[:200], 0)
        return parsed

    def _raw_get(self, path: str) -> dict[str, Any]:
        return self._read(lambda: self._raw("get", path), what=f"GET {path}")

    def _read(self, call: Callable[[], T], *, what: str) -> T:
        """Run an idempotent call, retrying transient failures with back-off."""
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return call()
            except Exception as exc:
                error = self._translated(exc, what)
                if not isinstance(error, TransientBackendError) or attempt == self._retry.attempts:
                    raise error from exc
                delay = self._retry.wait(attempt, hinted=error.delay)
                log.warning("%s: %s; retry %d in %.1fs", what, error, attempt, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _translated(self, exc: Exception, what: str) -> BackendError:
        """``translate``, counted in ``api_errors`` by HTTP code (or status) for metrics."""
        error = self._translate(exc, what, base_url=self.base_url)
        self.api_errors[str(error.code) if error.code else error.status or "transport"] += 1
        return error
