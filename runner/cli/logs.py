"""Logging set-up: text for a terminal, JSON lines with --log-format json; never a secret.

A filter on the root handler masks the API key in every record, whatever logged it (the SDK
and HTTP client included). Called once by ``runner.cli.main``.
"""

from __future__ import annotations

import json
import logging
import sys

from runner.settings import Settings

HANDLER_NAME = "gbatch"


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
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(settings: Settings, *, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    handler.addFilter(RedactSecrets([key]))
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)  # a second main() in one process (tests) replaces its own
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("gbatch").setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("runner").setLevel(logging.DEBUG if verbose else logging.INFO)
