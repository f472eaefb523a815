"""The Vertex AI backend end to end through the CLI (GBATCH_BACKEND=vertex): the real SDK in
Vertex mode against the emulator's Vertex mode, and google-cloud-storage against
gcp-storage-emulator, both over real HTTP. The same reconcile guarantees as for the Developer
API: intent before create, a lost create adopted by listing, every key ingested once,
retries of failed lines only. Counts are taken at the emulators."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.emulator import Emulator, EmulatorConfig, Fault
from tests.conftest import Gbatch
from tests.vertex_servers import (
    LOCATION,
    PROJECT,
    STAGING,
    TOKEN,
    StorageServer,
    storage_server,
)

# Keys that are valid Vertex label values and keys that are not (they travel base32).
ROWS = [("plain-1", "Kettle"), ("SKU 2/Ä", "Lamp"), ("k" * 80, "Chair")]


@pytest.fixture
def storage() -> Iterator[StorageServer]:
    with storage_server() as server:
        yield server


@pytest.fixture
def emulator(tmp_path: Path, storage: StorageServer) -> Iterator[Emulator]:
    """The conftest emulator, in Vertex mode: it reads and writes the storage emulator."""
    emu = Emulator(EmulatorConfig(data_dir=tmp_path / "emulator", storage_url=storage.url))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def vertex(
    gbatch: Gbatch, emulator: Emulator, storage: StorageServer, monkeypatch: pytest.MonkeyPatch
) -> Gbatch:
    for name in ("GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION"):
        monkeypatch.delenv(name, raising=False)  # Vertex needs no API key
    monkeypatch.setenv("GBATCH_BACKEND", "vertex")
    monkeypatch.setenv("GBATCH_VERTEX_PROJECT", PROJECT)
    monkeypatch.setenv("GBATCH_VERTEX_LOCATION", LOCATION)
    monkeypatch.setenv("GBATCH_VERTEX_STAGING", STAGING)
    monkeypatch.setenv("GBATCH_VERTEX_BASE_URL", emulator.base_url)
    monkeypatch.setenv("GBATCH_VERTEX_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage.url)
    return gbatch


def products(gbatch: Gbatch) -> None:
    rows = ", ".join(f"{{sku: {json.dumps(sku)}, name: {name}}}" for sku, name in ROWS)
    gbatch.write(
        "copy.yaml",
        f"""
name: copy
model: gemini-2.5-flash
source:
  key: sku
  rows: [{rows}]
prompt:
  system: You write product copy.
  template: "Describe {{{{ name }}}}."
""",
    )


def numbers(gbatch: Gbatch, count: int) -> None:
    body = "".join(f"    - {{n: {i}}}\n" for i in range(count))
    gbatch.write(
        "nums.yaml",
        f"model: gemini-2.5-flash\nname: nums\nsource:\n  key: n\n  rows:\n{body}"
        "prompt: {template: 'Number {{ n }}'}\n",
    )


def test_apply_wait_runs_a_manifest_on_vertex_end_to_end(
    vertex: Gbatch, emulator: Emulator, storage: StorageServer
) -> None:
    products(vertex)
    plan = vertex("plan", "manifests")
    assert plan.code == 0, plan.err
    assert emulator.count("publisherModels.countTokens") >= 1  # plan counted on Vertex
    result = vertex("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    rows = vertex.sql("select key, status, text, prompt_tokens > 0, job from copy order by key")
    assert sorted(r[0] for r in rows) == sorted(sku for sku, _ in ROWS)
    assert {(r[1], r[3]) for r in rows} == {("succeeded", True)}
    by_key = {r[0]: r[2] for r in rows}
    assert by_key["SKU 2/Ä"] == "echo: Describe Lamp."  # joined by key, not by position
    (job,) = emulator.vertex.jobs.values()
    assert all(r[4] == job.name for r in rows)
    assert job.name.startswith("projects/") and "/batchPredictionJobs/" in job.name
    assert job.model == "publishers/google/models/gemini-2.5-flash"
    assert job.labels == {"managed_by": "gbatch"}
    assert emulator.count("batchPredictionJobs.create") == 1
    # the input went through Cloud Storage as Vertex lines (no key; the key in labels), and
    # was deleted once ingested; the output stays where Vertex wrote it
    assert job.input_uris[0].startswith(f"{STAGING}/inputs/")
    assert not storage.names("runs/inputs/")
    (output,) = storage.names("runs/outputs/")
    assert "/prediction-model-" in output and output.endswith("/predictions.jsonl")
    lines = [json.loads(x) for x in storage.read(output).splitlines()]
    assert {"status", "processed_time", "request", "response"} <= set(lines[0])
    assert all("key" not in line and "gbatch_key" in str(line["request"]) for line in lines)
    status = vertex("status", "--jobs")
    assert status.code == 0, status.err
    # the jobs table cuts cells at 60 characters (runner/cli/render.py): the name's head shows
    assert job.name[:59] in status.out and "ingested" in status.out
    again = vertex("apply", "manifests", "--wait")
    assert again.code == 0, again.err
    assert emulator.count("batchPredictionJobs.create") == 1  # nothing new to send
    stored = [p for p in vertex.root.rglob("*") if p.is_file() and "emulator" not in p.parts]
    assert TOKEN not in result.out + result.err + status.out
    assert not [p for p in stored if TOKEN.encode() in p.read_bytes()]


def test_a_create_whose_reply_is_lost_is_adopted_by_listing(
    vertex: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GBATCH_HTTP_TIMEOUT_S", "1")
    numbers(vertex, 3)
    emulator.add_fault(Fault(endpoint="batchPredictionJobs.create", kind="hang", times=1))
    result = vertex("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batchPredictionJobs.create") == 1
    assert len(emulator.vertex.jobs) == 1
    assert vertex.sql("select count(*), count(distinct key) from nums_history") == [(3, 3)]
    events = vertex("query", "select kind from gbatch_events where kind = 'adopted'")
    assert "adopted" in events.out


def test_failed_lines_are_retried_alone(vertex: Gbatch, emulator: Emulator) -> None:
    numbers(vertex, 40)
    emulator.add_fault(
        Fault(endpoint="batchPredictionJobs.create", fail_lines_fraction=0.2, times=1)
    )
    result = vertex("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    jobs = vertex.sql("select count(*) from nums_history group by job order by min(ingested_at)")
    first_failed = vertex.sql(
        "select count(*) from nums_history where status = 'failed' and job = "
        "(select job from nums_history order by ingested_at limit 1)"
    )[0][0]
    assert 0 < first_failed < 40
    assert [j[0] for j in jobs] == [40, first_failed]  # the retry carried only the failures
    assert vertex.sql("select count(*), count(*) filter (status = 'succeeded') from nums") == [
        (40, 40)
    ]
    # the line's status text became an error the ledger could classify (INTERNAL: retryable)
    assert vertex.sql(
        "select distinct error->>'status', error->>'code' from nums_history where status = 'failed'"
    ) == [("INTERNAL", "500")]
    assert emulator.count("batchPredictionJobs.create") == 2


def test_a_manifest_with_a_cache_block_is_refused_for_vertex(
    vertex: Gbatch, emulator: Emulator, storage: StorageServer
) -> None:
    (vertex.manifests / "guide.md").write_text("Short sentences. " * 400)
    path = vertex.write(
        "cached.yaml",
        "name: cached\nmodel: gemini-2.5-flash\n"
        "source: {rows: [{q: a}]}\nprompt: {template: '{{ q }}'}\n"
        "cache:\n  files: [guide.md]\n",
    )
    for command in ("validate", "plan", "apply"):
        result = vertex(command, "manifests")
        assert result.code == 2, (command, result.out, result.err)
        assert f"{path}:6:3: cache: explicit context caches are not available" in result.err
        assert "Vertex AI batch" in result.err
    assert [c for c in emulator.calls if not c.endpoint.startswith("admin.")] == []
    assert storage.names() == []


def test_output_split_over_several_files_is_followed(
    vertex: Gbatch, emulator: Emulator, storage: StorageServer
) -> None:
    emulator.vertex.lines_per_file = 3
    numbers(vertex, 10)
    result = vertex("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    files = storage.names("runs/outputs/")
    assert [Path(f).name for f in files] == [f"predictions_{i:05d}.jsonl" for i in (1, 2, 3, 4)]
    assert vertex.sql(
        "select count(*), count(distinct key), count(*) filter (status = "
        "'succeeded') from nums_history"
    ) == [(10, 10, 10)]
    assert emulator.count("batchPredictionJobs.create") == 1


PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


def test_media_travel_as_gs_uris(
    vertex: Gbatch, emulator: Emulator, storage: StorageServer
) -> None:
    (vertex.manifests / "img").mkdir()
    (vertex.manifests / "img" / "a.png").write_bytes(PNG)
    vertex.write("photos.csv", "id,photo\n1,img/a.png\n2,img/a.png\n")
    vertex.write(
        "photos.yaml",
        "model: gemini-2.5-flash\nsource: {path: photos.csv, key: id}\n"
        "prompt: {template: 'Describe it', media: [photo]}\n",
    )
    result = vertex("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert vertex.sql("select count(*) filter (status = 'succeeded') from photos") == [(2,)]
    (output,) = storage.names("runs/outputs/")
    lines = [json.loads(x) for x in storage.read(output).splitlines()]
    uris = {line["request"]["contents"][0]["parts"][0]["fileData"]["fileUri"] for line in lines}
    (uri,) = uris  # one upload for the two rows
    assert uri.startswith(f"{STAGING}/media/")
    assert storage.names("runs/media/") == []  # deleted once no job needs it


@pytest.mark.parametrize("outcome", ["FAILED", "EXPIRED"])
def test_a_failed_or_expired_vertex_job_is_resubmitted_once(
    vertex: Gbatch, emulator: Emulator, outcome: str
) -> None:
    numbers(vertex, 5)
    emulator.add_fault(Fault(endpoint="batchPredictionJobs.create", job_outcome=outcome, times=1))
    result = vertex("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batchPredictionJobs.create") == 2
    assert vertex.sql("select count(*) filter (status = 'succeeded') from nums") == [(5,)]
    errors = vertex.sql(
        "select distinct error->>'status' from nums_history where status = 'failed'"
    )
    assert errors == [(f"JOB_{outcome}",)]
