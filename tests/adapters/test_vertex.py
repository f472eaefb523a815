"""The Vertex AI adapter against the real servers over HTTP (the SDK in Vertex mode against the
emulator's Vertex mode, google-cloud-storage against gcp-storage-emulator): the key in the
request labels, the Vertex output normalised to key lines, the errors translated; and the
settings that choose it."""

from __future__ import annotations

import ast
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.adapters import backends, vertex
from runner.core import failures
from runner.core.jobs import JobState, RemoteJob
from runner.emulator import Emulator, EmulatorConfig, Fault
from runner.errors import (
    GbatchError,
    PermanentBackendError,
    ResultsMismatchError,
    TransientBackendError,
    UnclearCreateError,
)
from runner.settings import Settings
from tests.vertex_servers import (
    BUCKET,
    LOCATION,
    PROJECT,
    STAGING,
    TOKEN,
    StorageServer,
    free_port,
    storage_server,
)

LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


@pytest.fixture
def storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[StorageServer]:
    with storage_server() as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        yield server


@pytest.fixture
def emulator(tmp_path: Path, storage: StorageServer) -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(data_dir=tmp_path / "emu", storage_url=storage.url)) as emu:
        yield emu


def backend_at(base_url: str) -> vertex.VertexBackend:
    credentials, _ = vertex.credentials_from(TOKEN)
    return vertex.VertexBackend(
        project=PROJECT,
        location=LOCATION,
        staging=vertex.Staging.parse(STAGING),
        credentials=credentials,
        base_url=base_url,
        timeout_s=5,
        retry=failures.RetryPolicy(attempts=3, first_delay_s=0.0),
        sleep=lambda _: None,
    )


@pytest.fixture
def backend(emulator: Emulator) -> vertex.VertexBackend:
    return backend_at(emulator.base_url)


def runner_lines(path: Path, lines: list[tuple[str, dict[str, object]]]) -> Path:
    path.write_text("".join(json.dumps({"key": k, "request": r}) + "\n" for k, r in lines))
    return path


def ask(text: str) -> dict[str, object]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


# -- the key inside each request -----------------------------------------------------------
@given(st.text(max_size=300))
def test_every_key_round_trips_through_valid_vertex_labels(key: str) -> None:
    labels = vertex.key_labels(key)
    assert all(LABEL_KEY.fullmatch(k) and LABEL_VALUE.fullmatch(v) for k, v in labels.items())
    assert vertex.key_from_labels({"team": "x", **labels}) == key


def test_a_key_that_is_a_label_value_travels_as_itself() -> None:
    assert vertex.key_labels("sku-1_a") == {"gbatch_key": "sku-1_a"}
    assert vertex.key_from_labels({}) is None and vertex.key_from_labels(None) is None


def test_a_key_too_long_for_labels_is_refused_with_the_limit() -> None:
    with pytest.raises(PermanentBackendError, match="too long to travel in Vertex labels"):
        vertex.key_labels("K" * 2000)


@pytest.mark.parametrize(
    ("status", "code", "name", "retryable"),
    [
        (
            'INTERNAL error occurred: {"error": {"code": 500, "message": "x", "status": '
            '"INTERNAL"}}',
            500,
            "INTERNAL",
            True,
        ),
        (
            'Bad Request: {"error": {"code": 400, "message": "Please use a valid role", '
            '"status": "INVALID_ARGUMENT"}}',
            400,
            "INVALID_ARGUMENT",
            False,
        ),
        ("RESOURCE_EXHAUSTED: quota", None, "RESOURCE_EXHAUSTED", True),
        ("something odd happened", None, None, True),
    ],
)
def test_a_failed_lines_status_text_becomes_an_error_the_ledger_classifies(
    status: str, code: int | None, name: str | None, retryable: bool
) -> None:
    line = vertex.runner_line({"status": status, "request": {"labels": {"gbatch_key": "k"}}})
    assert line is not None and line["key"] == "k"
    error = line["error"]
    assert error.get("code") == code and error.get("status") == name
    assert error["message"] == status
    verdict = failures.classify(code=error.get("code"), status=error.get("status"))
    assert verdict.retryable is retryable


# -- files in Cloud Storage ----------------------------------------------------------------
def test_upload_writes_vertex_lines_with_the_key_in_the_requests_labels(
    backend: vertex.VertexBackend, storage: StorageServer, tmp_path: Path
) -> None:
    own = {**ask("hi"), "labels": {"team": "catalog"}}
    path = runner_lines(tmp_path / "in.jsonl", [("a", own), ("Ünïcode key", ask("yo"))])
    uploaded = backend.upload_jsonl(path, display_name="gbatch-x-1")
    assert uploaded.name == uploaded.uri == f"{STAGING}/inputs/gbatch-x-1.jsonl"
    lines = [json.loads(x) for x in storage.read("runs/inputs/gbatch-x-1.jsonl").splitlines()]
    assert [set(line) for line in lines] == [{"request"}, {"request"}]
    assert lines[0]["request"]["labels"] == {"team": "catalog", "gbatch_key": "a"}
    assert vertex.key_from_labels(lines[1]["request"]["labels"]) == "Ünïcode key"
    assert lines[1]["request"]["contents"] == ask("yo")["contents"]
    assert not list(tmp_path.glob("*.vertex"))  # the converted copy is gone
    assert backend.file_exists(uploaded.name)
    backend.delete_file(uploaded.name)
    assert not backend.file_exists(uploaded.name)
    backend.delete_file(uploaded.name)  # already gone is fine


# -- jobs ----------------------------------------------------------------------------------
def test_jobs_carry_the_gbatch_label_and_the_listing_finds_only_those(
    backend: vertex.VertexBackend, emulator: Emulator, tmp_path: Path
) -> None:
    src = backend.upload_jsonl(
        runner_lines(tmp_path / "in.jsonl", [("a", ask("hi"))]), display_name="j1"
    )
    created = backend.create_job(
        model="gemini-2.5-flash", display_name="j1", src_file=src.name, inline=None
    )
    other = {  # another team's job in the same project, without gbatch's label
        "displayName": "theirs",
        "model": "publishers/google/models/gemini-2.5-flash",
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [src.name]}},
        "outputConfig": {"gcsDestination": {"outputUriPrefix": f"gs://{BUCKET}/theirs"}},
    }
    request = urllib.request.Request(
        f"{emulator.base_url}/v1/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs",
        data=json.dumps(other).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5).close()
    assert len(emulator.vertex.jobs) == 2
    listed = list(backend.list_jobs(max_pages=2))
    assert [j.display_name for j in listed] == ["j1"]
    assert listed[0].name == created.name and created.state is JobState.PENDING
    done = backend.get_job(created.name)
    assert done.state is JobState.SUCCEEDED and done.succeeded_count == done.request_count == 1
    assert done.result_file and done.result_file.startswith(f"{STAGING}/outputs/j1/prediction-")
    dest = tmp_path / "out.jsonl"
    backend.download_results(done, dest)
    (line,) = [json.loads(x) for x in dest.read_text().splitlines()]
    assert line["key"] == "a" and line["response"]["candidates"][0]["content"]["parts"] == [
        {"text": "echo: hi"}
    ]


def test_download_follows_every_output_file_and_writes_each_key_once(
    backend: vertex.VertexBackend, storage: StorageServer, tmp_path: Path
) -> None:
    def out(key: str, *, ok: bool) -> str:
        line: dict[str, object] = {
            "status": "" if ok else "INTERNAL error occurred: boom",
            "processed_time": "2026-04-13T10:18:18.102004+00:00",
            "request": {**ask(key), "labels": vertex.key_labels(key)},
        }
        if ok:
            line["response"] = {"candidates": [{"content": {"parts": [{"text": key}]}}]}
        return json.dumps(line) + "\n"

    directory = "runs/outputs/j/prediction-model-2026-04-13T10:18:18.000000Z"
    storage.write(
        f"{directory}/predictions_00001.jsonl", (out("a", ok=False) + out("b", ok=True)).encode()
    )
    storage.write(
        f"{directory}/predictions_00002.jsonl",
        (out("a", ok=True) + out("b", ok=True) + out("C c", ok=False)).encode(),
    )
    storage.write(f"{directory}/notes.txt", b"not output")
    job = RemoteJob(
        name="projects/1/locations/l/batchPredictionJobs/2",
        display_name="j",
        state=JobState.SUCCEEDED,
        result_file=f"gs://{BUCKET}/{directory}",
    )
    dest = tmp_path / "out.jsonl"
    backend.download_results(job, dest)
    lines = {json.loads(x)["key"]: json.loads(x) for x in dest.read_text().splitlines()}
    assert len(dest.read_text().splitlines()) == 3
    assert "response" in lines["a"] and "response" in lines["b"]  # the answer wins
    assert lines["C c"]["error"]["status"] == "INTERNAL"


def test_an_output_line_without_a_key_is_kept_raw_never_guessed(
    backend: vertex.VertexBackend, storage: StorageServer, tmp_path: Path
) -> None:
    directory = "runs/outputs/k/prediction-model-x"
    line = {"status": "", "request": ask("who?"), "response": {"candidates": []}}
    storage.write(f"{directory}/predictions.jsonl", (json.dumps(line) + "\n{cut\n").encode())
    job = RemoteJob(
        name="projects/1/locations/l/batchPredictionJobs/3",
        display_name="k",
        state=JobState.SUCCEEDED,
        result_file=f"gs://{BUCKET}/{directory}",
    )
    dest = tmp_path / "out.jsonl"
    with pytest.raises(ResultsMismatchError, match="carry no gbatch key") as caught:
        backend.download_results(job, dest)
    assert not dest.exists()
    assert caught.value.raw_path.read_text().splitlines() == [json.dumps(line), "{cut"]
    assert "2 output line(s)" in str(caught.value)


# -- errors --------------------------------------------------------------------------------
def test_reads_retry_5xx_and_creates_never_blindly(
    backend: vertex.VertexBackend, emulator: Emulator, tmp_path: Path
) -> None:
    src = backend.upload_jsonl(
        runner_lines(tmp_path / "in.jsonl", [("a", ask("hi"))]), display_name="e1"
    )
    emulator.add_fault(Fault(endpoint="batchPredictionJobs.create", status=403))
    with pytest.raises(PermanentBackendError) as refused:
        backend.create_job(
            model="gemini-2.5-flash", display_name="e1", src_file=src.name, inline=None
        )
    assert refused.value.code == 403 and not isinstance(refused.value, UnclearCreateError)
    emulator.add_fault(Fault(endpoint="batchPredictionJobs.create", status=500))
    with pytest.raises(UnclearCreateError):  # a 5xx may follow a create that happened
        backend.create_job(
            model="gemini-2.5-flash", display_name="e1", src_file=src.name, inline=None
        )
    created = backend.create_job(
        model="gemini-2.5-flash", display_name="e1", src_file=src.name, inline=None
    )
    assert emulator.count("batchPredictionJobs.create") == 3
    emulator.add_fault(Fault(endpoint="batchPredictionJobs.get", status=503, times=2))
    assert backend.get_job(created.name).name == created.name
    assert emulator.count("batchPredictionJobs.get") == 3
    assert backend.api_errors["503"] == 2
    with pytest.raises(PermanentBackendError, match="GBATCH_BACKEND=gemini"):
        backend.get_job("batches/abc")
    with pytest.raises(PermanentBackendError, match="GBATCH_BACKEND=gemini"):
        backend.file_exists("files/abc")


def test_an_unreachable_endpoint_is_a_clear_transient_error_not_an_unclear_create(
    storage: StorageServer,
) -> None:
    closed = backend_at(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientBackendError) as caught:
        closed.create_job(
            model="gemini-2.5-flash", display_name="x", src_file=f"{STAGING}/in.jsonl", inline=None
        )
    assert caught.value.status == "CONNECTION" and not isinstance(caught.value, UnclearCreateError)
    assert "cannot reach Vertex AI at http://127.0.0.1" in str(caught.value)


def test_caches_are_refused_with_what_to_do(backend: vertex.VertexBackend) -> None:
    with pytest.raises(PermanentBackendError, match="remove the cache block"):
        backend.create_cache(model="gemini-2.5-flash", body={}, ttl_s=60, display_name="c")
    assert backend.find_cache("c") is None


# -- settings and wiring -------------------------------------------------------------------
def vertex_settings(monkeypatch: pytest.MonkeyPatch, **fields: object) -> Settings:
    for name in ("GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GBATCH_VERTEX_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    values: dict[str, object] = {
        "backend": "vertex",
        "vertex_staging": STAGING,
        "vertex_project": PROJECT,
        "vertex_access_token": TOKEN,
        **fields,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"vertex_staging": None}, "needs GBATCH_VERTEX_STAGING=gs://bucket/prefix"),
        ({"vertex_staging": "s3://x/y"}, "must be gs://bucket/prefix"),
        ({"vertex_project": None}, "needs a project: set GBATCH_VERTEX_PROJECT"),
        ({"inline_max_bytes": 1000}, "leave it at 0 with GBATCH_BACKEND=vertex"),
    ],
)
def test_backend_for_says_which_vertex_setting_is_missing(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, object], message: str
) -> None:
    with pytest.raises(GbatchError, match=re.escape(message)):
        backends.backend_for(vertex_settings(monkeypatch, **fields))


def test_backend_for_builds_the_backend_the_settings_name(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = backends.backend_for(vertex_settings(monkeypatch, vertex_location="europe-west4"))
    assert isinstance(chosen, vertex.VertexBackend)
    assert chosen.staging == vertex.Staging(bucket=BUCKET, prefix="runs")
    assert "europe-west4" in chosen.base_url  # Google's regional endpoint, no base URL given
    gemini = backends.backend_for(Settings(_env_file=None, api_key="k"))  # type: ignore[call-arg]
    # built on first use (runner.adapters.backends.Deferred): the method is GeminiBackend's
    assert type(gemini.list_jobs.__self__).__name__ == "GeminiBackend"  # type: ignore[attr-defined]


def test_the_vertex_project_setting_wins_over_google_cloud_project(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-gcloud")
    assert Settings(_env_file=None).vertex_project == "from-gcloud"  # type: ignore[call-arg]
    monkeypatch.setenv("GBATCH_VERTEX_PROJECT", "mine")
    assert Settings(_env_file=None).vertex_project == "mine"  # type: ignore[call-arg]


def test_only_the_vertex_adapter_imports_cloud_storage_and_google_auth() -> None:
    """import-linter sees every ``google.*`` as one package; this pins the finer rule."""
    root = Path(__file__).resolve().parents[2] / "runner"
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(
                n.startswith(("google.cloud", "google.auth", "google.oauth2", "google.api_core"))
                for n in names
            ):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"adapters/vertex.py"}
