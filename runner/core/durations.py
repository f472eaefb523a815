"""Human durations in manifests and settings ("90s", "15m", "48h", "2d"); called by the model."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError with the accepted forms when it is not a duration."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 48h or 2d")
    return float(match.group(1)) * _UNITS[match.group(2)]
