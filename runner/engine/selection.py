"""Label selectors, kubectl style: ``team=catalog``, ``tier!=test``, comma-separated = all.

Pure: ``Selector.parse(["team=catalog,lang=en"]).matches(manifest.metadata.labels)``. Used
by the CLI's plan / apply / status / diff (``--selector``); the daemon can take the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_TERM = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(!=|==|=)\s*([A-Za-z0-9_./-]*)\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    value: str
    equal: bool

    def __str__(self) -> str:
        return f"{self.key}{'=' if self.equal else '!='}{self.value}"


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> Selector:
        """Every ``key=value`` / ``key!=value`` term of every text; ValueError names a bad one."""
        found = []
        for text in texts:
            for term in text.split(","):
                match = _TERM.match(term)
                if not match:
                    raise ValueError(f"{term.strip()!r} is not label=value or label!=value")
                key, op, value = match.groups()
                found.append(Requirement(key=key, value=value, equal=op != "!="))
        return cls(tuple(found))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """All requirements hold (``!=`` also holds when the label is absent)."""
        return all((labels.get(r.key) == r.value) == r.equal for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def __str__(self) -> str:
        return ",".join(map(str, self.requirements)) or "(everything)"
