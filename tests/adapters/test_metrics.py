"""The metrics endpoint over real HTTP, reading a real state database."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from runner.adapters.metrics import MetricsServer
from runner.adapters.state import StateStore
from runner.core.lifecycle import Phase


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_read_the_state_and_health_reports_failing_checks(tmp_path: Path) -> None:
    state = StateStore(tmp_path / "state.sqlite")
    state.upsert_manifest(
        name="a", path="a.yaml", table_name="a", model="m", digest="d", status="ok"
    )
    state.upsert_manifest(
        name="b", path="b.yaml", table_name="b", model="m", digest="d", status="invalid"
    )
    common = {"digest": "d", "model": "m", "request_file": "f", "bytes": 1}
    state.add_jobs(
        [
            {"intent": "i1", "manifest": "a", "display_name": "j1", "requests": 10, **common},
            {"intent": "i2", "manifest": "a", "display_name": "j2", "requests": 5, **common},
        ]
    )
    first, second = state.jobs()
    for phase in ("uploaded", "submitting", "submitted", "downloaded", "ingested"):
        state.transition(first.id, Phase(phase))
    state.update_job(
        first.id,
        remote_state="succeeded",
        succeeded=9,
        failed=1,
        prompt_tokens=100,
        output_tokens=40,
        cost_usd=0.25,
    )
    for phase in ("uploaded", "submitting", "submitted"):
        state.transition(second.id, Phase(phase))
    state.update_job(second.id, remote_state="running")
    problems: list[str] = []

    def summary() -> dict[str, list[tuple[Any, ...]]]:  # as the CLI reads it: per scrape
        reader = StateStore(state.path)
        try:
            return reader.summary()
        finally:
            reader.close()

    server = MetricsServer(summary=summary, api_errors={"429": 3}, checks=lambda: problems).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        server.observe_reconcile(0.2)
        code, text = get(f"{base}/metrics")
        assert code == 200
        for line in (
            'gbatch_manifests{status="ok"} 1.0',
            'gbatch_manifests{status="invalid"} 1.0',
            'gbatch_jobs{phase="ingested",state="succeeded"} 1.0',
            'gbatch_jobs{phase="submitted",state="running"} 1.0',
            'gbatch_requests{outcome="submitted"} 15.0',
            'gbatch_requests{outcome="succeeded"} 9.0',
            'gbatch_requests{outcome="failed"} 1.0',
            'gbatch_tokens_total{kind="prompt"} 100.0',
            'gbatch_tokens_total{kind="output"} 40.0',
            "gbatch_cost_usd_total 0.25",
            'gbatch_api_errors_total{code="429"} 3.0',
            "gbatch_reconcile_duration_seconds_count 1.0",
        ):
            assert line in text.splitlines(), line
        assert "process_resident_memory_bytes" in text
        assert get(f"{base}/healthz") == (200, "ok\n")
        problems.append("the file watcher is dead")
        assert get(f"{base}/healthz") == (503, "the file watcher is dead\n")
    finally:
        server.stop()
        state.close()
