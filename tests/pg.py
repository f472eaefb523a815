"""Postgres for the tests of the shared state and the lake: a fresh database per test.

The server is the one ``dev.py test`` started (its URL in ``GBATCH_TEST_POSTGRES_URL``), or,
for a bare ``pytest`` run, one this session starts the same way (``dev.ensure_postgres``:
Debian's postgresql, a temp dir, a loopback port). Nothing is skipped without one. Test
modules import the fixtures they use from here.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

ENV = "GBATCH_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    import dev  # the repository's own set-up script, beside tests/

    with dev.ensure_postgres() as started:
        os.environ[ENV] = started  # processes the tests start find it too
        yield started
        del os.environ[ENV]


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A postgresql:// URL of a database of this test's own, dropped afterwards."""
    name = f"gbatch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    yield with_database(postgres_server, name)
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def conninfo(url: str) -> str:
    """The libpq keyword form of a URL (what ``ducklake:postgres:`` takes)."""
    parts = urlsplit(url)
    words = [f"dbname={parts.path.lstrip('/')}", f"host={parts.hostname}"]
    if parts.port:
        words.append(f"port={parts.port}")
    if parts.username:
        words.append(f"user={parts.username}")
    return " ".join(words)
