"""The status page on the daemon's HTTP server: ``/``, ``/api/status``, ``/api/query``.

The page (``runner/data/status.html``) is one self-contained file that polls ``/api/status``
(the ``gbatch status -o json`` document with jobs and recent events) and posts SQL to
``/api/query``, which runs it through the same locked-down, read-only connection as ``gbatch
query``, capped at ``row_limit`` rows. Who may ask: with ``GBATCH_UI_TOKEN`` set, only callers
sending it (``Authorization: Bearer``, or ``?token=`` in the page's address); without one only
local callers, and only when the server listens on a loopback address (the Host header must
name a loopback host too, against DNS rebinding). A query must be a JSON POST (no cross-site
form can send one). The data comes from callables the CLI wires (this module knows no
engine). Served by ``runner.adapters.metrics.MetricsServer``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from runner.errors import GbatchError, StoreBusyError

StatusSource = Callable[[], dict[str, Any]]
QueryRunner = Callable[[str, int], tuple[list[str], list[tuple[Any, ...]]]]
ROUTES = ("/", "/index.html", "/api/status", "/api/query")
MAX_QUERY_BYTES = 64 * 1024
LOOPBACK_NAMES = ("localhost",)
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # the token may be in the address
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # names lower-cased
    body: bytes = b""


@dataclass(frozen=True)
class Reply:
    code: int
    body: bytes
    content_type: str


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host of a Host header, without its port (``[::1]:80`` -> ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _json(code: int, value: Any) -> Reply:
    return Reply(
        code, json.dumps(value, default=str, ensure_ascii=False).encode(), "application/json"
    )


class StatusPage:
    def __init__(
        self,
        *,
        status: StatusSource,
        query: QueryRunner,
        bound_host: str,
        token: str | None,
        row_limit: int = 200,
    ) -> None:
        self._status = status
        self._query = query
        self._local_only = is_loopback(bound_host)
        self._token = token or None
        self.row_limit = row_limit
        self._html = resources.files("runner").joinpath("data/status.html").read_bytes()

    @property
    def refusal(self) -> str | None:
        """Why the page cannot be served at all (bound off loopback without a token)."""
        if self._token is None and not self._local_only:
            return (
                "the status page needs GBATCH_UI_TOKEN when --metrics-host is not a loopback "
                "address (/metrics and /healthz still answer)"
            )
        return None

    def _denied(self, request: Request) -> Reply | None:
        if self.refusal is not None:
            return Reply(403, (self.refusal + "\n").encode(), "text/plain")
        if self._token is not None:
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = bearer or (parse_qs(request.query).get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return Reply(
                    401, b"a valid token is required (?token=... or Bearer)\n", "text/plain"
                )
            return None
        if not is_loopback(_host_name(request.headers.get("host", ""))):
            return Reply(403, b"local callers only (Host must be a loopback name)\n", "text/plain")
        return None

    def reply(self, request: Request) -> Reply:
        denied = self._denied(request)
        if denied is not None:
            return denied
        if request.path in ("/", "/index.html") and request.method == "GET":
            return Reply(200, self._html, "text/html; charset=utf-8")
        if request.path == "/api/status" and request.method == "GET":
            try:
                return _json(200, self._status())
            except GbatchError as exc:
                return _json(503, {"error": str(exc)})
        if request.path == "/api/query" and request.method == "POST":
            return self._run_query(request)
        return Reply(405, b"method not allowed\n", "text/plain")

    def _run_query(self, request: Request) -> Reply:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _json(415, {"error": 'send the query as JSON: {"sql": "select ..."}'})
        if len(request.body) > MAX_QUERY_BYTES:
            return _json(413, {"error": f"a query is at most {MAX_QUERY_BYTES} bytes"})
        try:
            sql = json.loads(request.body or b"{}").get("sql")
        except (ValueError, AttributeError):
            sql = None
        if not isinstance(sql, str) or not sql.strip():
            return _json(400, {"error": 'expected {"sql": "select ..."}'})
        try:
            columns, rows = self._query(sql, self.row_limit + 1)
        except StoreBusyError as exc:
            return _json(503, {"error": str(exc)})
        except GbatchError as exc:
            return _json(400, {"error": str(exc)})
        return _json(
            200,
            {
                "columns": columns,
                "rows": [list(r) for r in rows[: self.row_limit]],
                "truncated": len(rows) > self.row_limit,
                "limit": self.row_limit,
            },
        )
