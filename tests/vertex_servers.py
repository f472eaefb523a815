"""The servers the Vertex AI tests talk to: gcp-storage-emulator (Cloud Storage, real HTTP, in
this process) beside the project's emulator in its Vertex mode; used by tests/adapters and
tests/e2e test_vertex.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from gcp_storage_emulator.server import create_server
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

BUCKET = "gbatch-staging"
STAGING = f"gs://{BUCKET}/runs"
PROJECT = "test-project"
LOCATION = "us-central1"
TOKEN = "ya29.test-token-5c1e"  # tests assert it never leaks into output, logs or databases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StorageServer:
    """gcp-storage-emulator with one bucket, and a client to look inside it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": url},
        )

    def names(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(BUCKET, prefix=prefix))

    def read(self, name: str) -> bytes:
        return bytes(self.client.bucket(BUCKET).blob(name).download_as_bytes())

    def write(self, name: str, data: bytes) -> None:
        self.client.bucket(BUCKET).blob(name).upload_from_string(data)


@contextmanager
def storage_server() -> Iterator[StorageServer]:
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield StorageServer(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
