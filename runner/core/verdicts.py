"""What to do with each row of a new request set: the row-diff rules, in their order. Pure.

Each row of the desired set is judged by the first rule that holds for it, in ``ORDER``.
The ledger (``runner.adapters.ledger.diff``) applies the same rules to millions of rows in
SQL for speed; its CASE is built from ``ORDER`` and a property test checks it against
:func:`verdict` on random ledgers (``tests/unit/test_verdicts.py``).

- unchanged: the (key, request hash) was answered before;
- in_flight: a live job of this manifest carries it;
- reused: the same request hash has an answer in the store (copied, not sent);
- waiting: the hash is in flight elsewhere (copied once it is answered);
- exhausted: it failed permanently, or more often than ``policy.retries`` allows;
- retry: it failed before and may be sent again;
- changed: the key was known with another request; new: never seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class RowFacts:
    """What the ledger knows about one desired row (its key and request hash)."""

    answered: bool = False  # a succeeded outcome for this (key, hash)
    in_flight: bool = False  # carried by a live job of this manifest
    stored_answer: bool = False  # the hash is in the answer store (reuse on)
    in_flight_elsewhere: bool = False  # the hash is carried by another live job (reuse on)
    failures: int = 0  # failed outcomes for this (key, hash)
    retryable: bool = True  # all of those failures were retryable
    known_key: bool = False  # the key was in the ledger or the previous set


Rule = Callable[[RowFacts, int], bool]

RULES: dict[str, Rule] = {
    "unchanged": lambda f, retries: f.answered,
    "in_flight": lambda f, retries: f.in_flight,
    "reused": lambda f, retries: f.stored_answer,
    "waiting": lambda f, retries: f.in_flight_elsewhere,
    "exhausted": lambda f, retries: f.failures > 0 and (not f.retryable or f.failures > retries),
    "retry": lambda f, retries: f.failures > 0,
    "changed": lambda f, retries: f.known_key,
    "new": lambda f, retries: True,
}
ORDER = tuple(RULES)
SUBMIT = ("new", "changed", "retry")  # the verdicts that send the row


def verdict(facts: RowFacts, *, retries: int) -> str:
    """The first rule in ``ORDER`` that holds."""
    return next(name for name in ORDER if RULES[name](facts, retries))


def send_once(rows: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """Rows of one set that would send the same request: only the smallest key is sent, the
    others wait for its answer. ``rows`` are (key, hash, verdict); returns key -> verdict."""
    first: dict[str, str] = {}
    judged = list(rows)
    for key, request_hash, judged_as in judged:
        if judged_as in SUBMIT and (request_hash not in first or key < first[request_hash]):
            first[request_hash] = key
    return {
        key: ("waiting" if judged_as in SUBMIT and first[request_hash] != key else judged_as)
        for key, request_hash, judged_as in judged
    }
