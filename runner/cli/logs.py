"""Logging set-up: text for a terminal, JSON lines with --log-format json; never a secret.

A filter on the root handler masks the secrets (the API key, the page token) in every record,
whatever logged it (the SDK and HTTP client included). In JSON mode every line on stderr is
one object with the same keys: ``time`` (ISO 8601 with its UTC offset), ``level``, ``logger``,
``event``, ``message``, ``manifest``, ``job``, ``phase`` (null when a record has none; a call
passes them as ``extra=fields(...)``), and the CLI's own lines (start-up, progress) go through
``note`` so they are JSON too. Called by ``runner.cli.invoke`` and the commands.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from runner.cli import console
from runner.engine.runtime import fields

HANDLER_NAME = "gbatch"
FIELDS = ("manifest", "job", "phase", "event")
log = logging.getLogger("gbatch")


class RedactSecrets(logging.Filter):
    """Replaces each secret string in a record's final message with ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self.secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = message, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        for name in FIELDS:
            entry[name] = getattr(record, name, None)
        entry["event"] = entry["event"] or "log"
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def json_mode() -> bool:
    root = logging.getLogger()
    return any(
        h.get_name() == HANDLER_NAME and isinstance(h.formatter, JsonFormatter)
        for h in root.handlers
    )


def note(message: str, *, event: str, manifest: str | None = None, err: bool = False) -> None:
    """A line of the CLI's own (start-up, progress): JSON in JSON mode, else printed as is
    (on stdout, or stderr with ``err``)."""
    if json_mode():
        log.info(message, extra=fields(event=event, manifest=manifest))
    else:
        console.say(message, err=err)


def setup_logging(*, log_format: str, verbose: bool = False, secrets: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactSecrets(secrets))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)  # a second main() in one process (tests) replaces its own
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("gbatch").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("runner").setLevel(logging.DEBUG if verbose else logging.INFO)
