"""``watch --metrics-port``: Prometheus metrics and a health endpoint over HTTP.

``/metrics`` is read at scrape time from the state database (manifests by status, jobs by
phase and remote state, requests, tokens, cost) plus what the process counts itself (API
errors by code, reconcile durations). ``/healthz`` answers 200 while the daemon's checks pass
and 503 with the failing checks otherwise (a dead watcher, a reconcile loop that stopped
beating). With a ``StatusPage`` it also serves the status page (``/``, ``/api/status``,
``/api/query``; see ``runner.adapters.webui``). Served from a daemon thread; the state is read
through a connection of its own (``summary``). A port already taken is a ``ListenError``
naming it. Started by the CLI's ``watch`` command.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from runner.adapters.webui import ROUTES, SECURITY_HEADERS, Request, StatusPage
from runner.errors import ListenError

Checks = Callable[[], list[str]]  # the failing health checks; empty when healthy
# The state's aggregates (``State.summary``), read afresh: the CLI opens whichever state the
# settings name (SQLite or Postgres) for each scrape.
Summary = Callable[[], dict[str, list[tuple[Any, ...]]]]


class _StateCollector(Collector):
    """Gauges read from the state database on every scrape (so they survive restarts)."""

    def __init__(self, summary: Summary, api_errors: Mapping[str, int]) -> None:
        self._summary = summary
        self._api_errors = api_errors

    def collect(self) -> Iterable[Metric]:
        summary = self._summary()
        manifests = GaugeMetricFamily(
            "gbatch_manifests", "Manifests by sync status", labels=["status"]
        )
        for status, count in summary["manifests"]:
            manifests.add_metric([status], count)
        yield manifests
        jobs = GaugeMetricFamily(
            "gbatch_jobs", "Batch jobs by local phase and remote state", labels=["phase", "state"]
        )
        requests = GaugeMetricFamily(
            "gbatch_requests", "Requests in jobs, by outcome", labels=["outcome"]
        )
        tokens = CounterMetricFamily("gbatch_tokens", "Tokens of ingested jobs", labels=["kind"])
        cost = CounterMetricFamily("gbatch_cost_usd", "Cost of ingested jobs at batch price")
        total = [0, 0, 0, 0, 0, 0.0]
        for phase, remote_state, count, *sums in summary["jobs"]:
            jobs.add_metric([phase, remote_state], count)
            for i, value in enumerate(sums):
                total[i] += value or 0
        submitted, succeeded, failed, prompt, output, usd = total
        requests.add_metric(["submitted"], submitted)
        requests.add_metric(["succeeded"], succeeded)
        requests.add_metric(["failed"], failed)
        tokens.add_metric(["prompt"], prompt)
        tokens.add_metric(["output"], output)
        cost.add_metric([], usd)
        yield from (jobs, requests, tokens, cost)
        errors = CounterMetricFamily(
            "gbatch_api_errors", "Gemini API errors by HTTP code or status", labels=["code"]
        )
        for code, count in sorted(dict(self._api_errors).items()):
            errors.add_metric([code], count)
        yield errors


class MetricsServer:
    """The HTTP endpoint; ``observe_reconcile`` feeds the reconcile-duration histogram."""

    def __init__(
        self,
        *,
        summary: Summary,
        api_errors: Mapping[str, int],
        checks: Checks,
        host: str = "127.0.0.1",
        port: int = 0,
        page: StatusPage | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StateCollector(summary, api_errors))
        ProcessCollector(registry=self.registry)  # CPU seconds, resident memory, open fds
        self._reconcile = Histogram(
            "gbatch_reconcile_duration_seconds",
            "Time to reconcile the manifests of one event or resync",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        try:
            self._server = ThreadingHTTPServer((host, port), _handler(self.registry, checks, page))
        except OSError as exc:
            taken = exc.errno == errno.EADDRINUSE
            why = "the port is already in use" if taken else (exc.strerror or str(exc))
            raise ListenError(
                f"cannot listen on {host}:{port}: {why} (pick another port, or 0 for a free one)"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gbatch-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def observe_reconcile(self, seconds: float) -> None:
        self._reconcile.observe(seconds)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, checks: Checks, page: StatusPage | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _page(self, method: str) -> bool:
            path, _, query = self.path.partition("?")
            if page is None or path not in ROUTES:
                return False
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(size, 1 << 20)) if method == "POST" else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = page.reply(Request(method, path, query, headers, body))
            self._send(reply.code, reply.body, reply.content_type, page=True)
            return True

        def do_POST(self) -> None:
            if not self._page("POST"):
                self._send(404, b"not found\n", "text/plain")

        def do_GET(self) -> None:
            if self._page("GET"):
                return
            if self.path.split("?")[0] == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path.split("?")[0] in ("/healthz", "/health"):
                failing = checks()
                body = "\n".join(failing) if failing else "ok"
                self._send(503 if failing else 200, (body + "\n").encode(), "text/plain")
            else:
                self._send(404, b"not found: try /, /metrics or /healthz\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str, *, page: bool = False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            for name, value in SECURITY_HEADERS if page else ():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Scrapes are not worth a log line each."""

    return Handler
