"""End to end through the CLI against the emulator over real HTTP: manifests in, rows out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.emulator import Emulator
from tests.conftest import API_KEY, Gbatch

SEED_LINES = [
    {"key": "request_1", "request": {"contents": [{"parts": [{"text": "Explain AI"}]}]}},
    {"key": "request_2", "request": {"contents": [{"parts": [{"text": "Explain qubits"}]}]}},
]

PRODUCTS = """sku,name,category
A-1,Trail shoe,footwear
A-2,Wool sock,footwear
B-1,Tent,camping
"""

PRODUCT_MANIFEST = """
apiVersion: gbatch/v1
kind: Batch
metadata: {name: product-copy}
spec:
  model: gemini-2.5-flash
  source: {path: products.csv, key: sku}
  prompt:
    system: You write product copy.
    template: "Describe {{ name }} ({{ category }})."
  generation: {temperature: 0.2, max_output_tokens: 128}
  output_schema:
    type: object
    properties:
      title: {type: string}
      bullets: {type: array, items: {type: string}}
      rating: {type: integer}
      spec: {type: object, properties: {weight: {type: number}, color: {type: string}}}
    required: [title, bullets, rating, spec]
  output: {table: product_copy}
"""


def seed(gbatch: Gbatch) -> None:
    gbatch.write("batch_requests.jsonl", "".join(json.dumps(x) + "\n" for x in SEED_LINES))
    gbatch.write(
        "seed.yaml", "model: gemini-2.5-flash\nsource:\n  requests: batch_requests.jsonl\n"
    )


def test_the_seed_jsonl_runs_with_a_three_line_manifest(gbatch: Gbatch, emulator: Emulator) -> None:
    seed(gbatch)
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    rows = gbatch.sql(
        "select key, status, text, prompt_tokens > 0, cost_usd > 0, job, manifest "
        "from seed order by key"
    )
    assert [r[:2] for r in rows] == [("request_1", "succeeded"), ("request_2", "succeeded")]
    assert rows[0][2] == "echo: Explain AI" and rows[1][2] == "echo: Explain qubits"
    assert all(r[3] and r[4] and r[5].startswith("batches/") and r[6] == "seed" for r in rows)
    assert emulator.count("batches.create") == 1
    assert API_KEY not in result.out + result.err
    stored = [p for p in gbatch.root.rglob("*") if p.is_file() and "emulator" not in p.parts]
    assert gbatch.db in stored and gbatch.state_dir / "state.sqlite" in stored
    assert not [p for p in stored if API_KEY.encode() in p.read_bytes()]


def test_applying_the_same_manifests_twice_creates_nothing_the_second_time(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    seed(gbatch)
    assert gbatch("apply", "manifests", "--wait").code == 0
    again = gbatch("apply", "manifests", "--wait")
    assert again.code == 0, again.err
    assert emulator.count("batches.create") == 1
    assert "2 unchanged" in again.out
    assert gbatch.sql("select count(*) from seed") == [(2,)]


def test_a_csv_template_with_an_output_schema_gives_typed_columns(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write("products.csv", PRODUCTS)
    gbatch.write("products.yaml", PRODUCT_MANIFEST)
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    rows = gbatch.sql(
        "select sku, name, status, typeof(title), typeof(bullets), typeof(rating), "
        "bullets[1] is not null, spec.color is not null from product_copy order by sku"
    )
    assert [r[0] for r in rows] == ["A-1", "A-2", "B-1"]
    assert all(r[2] == "succeeded" for r in rows)
    assert rows[0][3:] == ("VARCHAR", "VARCHAR[]", "BIGINT", True, True)
    history = gbatch.sql("select count(*) from product_copy_history")
    assert history == [(3,)]


def test_an_edited_row_resubmits_only_that_row_and_history_keeps_both(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    gbatch.write("products.csv", PRODUCTS)
    gbatch.write("products.yaml", PRODUCT_MANIFEST)
    assert gbatch("apply", "manifests", "--wait").code == 0
    gbatch.write("products.csv", PRODUCTS.replace("Tent,camping", "Big tent,camping"))
    plan = gbatch("plan", "manifests")
    assert "1 changed" in plan.out and "2 unchanged" in plan.out, plan.out
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batches.create") == 2
    assert gbatch.sql("select name from product_copy where sku = 'B-1'") == [("Big tent",)]
    assert gbatch.sql("select count(*) from product_copy_history where sku = 'B-1'") == [(2,)]


def test_a_parquet_glob_and_inline_rows_are_sources_too(gbatch: Gbatch) -> None:
    import duckdb

    data = gbatch.manifests / "data"
    data.mkdir()
    con = duckdb.connect()
    for part in (1, 2):
        con.execute(
            f"copy (select 'p{part}-' || i as id, 'topic ' || i as topic from range(3) t(i)) "
            f"to '{data}/part{part}.parquet' (format parquet)"
        )
    con.close()
    gbatch.write(
        "parts.yaml",
        "model: gemini-2.5-flash\nsource: {path: 'data/*.parquet', key: id}\n"
        "prompt: {template: 'Write about {{ topic }}'}\n",
    )
    gbatch.write(
        "inline.yaml",
        "name: inline\nmodel: gemini-2.5-flash\n"
        "source: {rows: [{city: Oslo}, {city: Lima}]}\n"
        "prompt: {template: 'Weather in {{ city }}?'}\n",
    )
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert gbatch.sql("select count(*), count(*) filter (status = 'succeeded') from parts") == [
        (6, 6)
    ]
    assert gbatch.sql("select city, text from inline order by city") == [
        ("Lima", "echo: Weather in Lima?"),
        ("Oslo", "echo: Weather in Oslo?"),
    ]


def test_a_manifest_over_the_per_job_limit_becomes_several_jobs(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    rows = "".join(f"  - {{n: {i}}}\n" for i in range(25))
    gbatch.write(
        "many.yaml",
        "model: gemini-2.5-flash\nsource:\n  key: n\n  rows:\n"
        + rows
        + "prompt: {template: 'Number {{ n }}'}\npolicy: {max_requests_per_job: 10}\n",
    )
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("batches.create") == 3
    assert gbatch.sql("select count(distinct job), count(*) from many") == [(3, 25)]


def test_status_and_query_show_the_bookkeeping(gbatch: Gbatch) -> None:
    seed(gbatch)
    assert gbatch("apply", "manifests", "--wait").code == 0
    status = gbatch("status", "--jobs")
    assert status.code == 0
    assert "seed" in status.out and "ingested" in status.out
    query = gbatch("query", "select manifest, phase, requests from gbatch_jobs", "--format", "json")
    assert json.loads(query.out) == [{"manifest": "seed", "phase": "ingested", "requests": 2}]
    csv = gbatch("query", "select key from seed order by key", "--format", "csv")
    assert csv.out.split() == ["key", "request_1", "request_2"]


def test_small_jobs_go_inline_when_configured(
    gbatch: Gbatch, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GBATCH_INLINE_MAX_BYTES", "100000")
    seed(gbatch)
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert emulator.count("files.upload") == 0 and emulator.count("batches.create") == 1
    assert gbatch.sql("select key, text from seed order by key") == [
        ("request_1", "echo: Explain AI"),
        ("request_2", "echo: Explain qubits"),
    ]


def test_json_logs_are_one_object_per_line_without_the_key(gbatch: Gbatch) -> None:
    seed(gbatch)
    result = gbatch("--log-format", "json", "-v", "apply", "manifests")
    assert result.code == 0, result.err
    logs = [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]
    assert any(entry["message"].startswith("seed: created batches/") for entry in logs)
    assert {"time", "level", "logger", "message"} <= set(logs[0])
    assert API_KEY not in result.err


def test_a_source_column_named_like_an_answer_property_is_kept_as_source_name(
    gbatch: Gbatch,
) -> None:
    gbatch.write("products.csv", PRODUCTS.replace("sku,name,category", "sku,title,category"))
    gbatch.write("products.yaml", PRODUCT_MANIFEST.replace("{{ name }}", "{{ title }}"))
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    rows = gbatch.sql("select source_title, typeof(title) from product_copy order by sku")
    assert rows == [("Trail shoe", "VARCHAR"), ("Wool sock", "VARCHAR"), ("Tent", "VARCHAR")]
    columns = {r[0] for r in gbatch.sql("describe product_copy")}
    assert "title_1" not in columns


@pytest.mark.parametrize("policy", ["add_columns", "new_table"])
def test_a_schema_change_follows_the_declared_policy_and_keeps_every_answer(
    gbatch: Gbatch, policy: str
) -> None:
    gbatch.write("products.csv", PRODUCTS)
    output = f"output: {{table: product_copy, on_schema_change: {policy}}}"
    manifest = PRODUCT_MANIFEST.replace("output: {table: product_copy}", output)
    assert manifest != PRODUCT_MANIFEST
    gbatch.write("products.yaml", manifest)
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert gbatch.sql("select typeof(rating) from product_copy limit 1") == [("BIGINT",)]
    changed = manifest.replace("rating: {type: integer}", "rating: {type: string}")
    assert changed != manifest
    gbatch.write("products.yaml", changed)
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    current = gbatch.sql("select count(*), min(typeof(rating)) from product_copy")
    assert current == [(3, "VARCHAR")]
    tables = {r[0] for r in gbatch.sql("select table_name from information_schema.tables")}
    if policy == "add_columns":  # one history with both versions, the old numbers as text
        assert gbatch.sql("select count(*) from product_copy_history") == [(6,)]
        assert not any("_until_" in t for t in tables)
    else:  # the old tables moved aside whole, with their types
        (old,) = [t for t in tables if t.startswith("product_copy_history_until_")]
        assert gbatch.sql(f"select count(*), min(typeof(rating)) from {old}") == [(3, "BIGINT")]
        assert gbatch.sql("select count(*) from product_copy_history") == [(3,)]


def test_the_results_file_opens_in_the_duckdb_cli_the_set_up_installs(
    gbatch: Gbatch,
) -> None:
    """The README tells users to read results with ``duckdb -readonly``: that CLI (installed
    beside gbatch) must read the files gbatch writes, views and compressed columns included."""
    seed(gbatch)
    assert gbatch("apply", "manifests", "--wait").code == 0
    cli = Path(sys.executable).with_name("duckdb")
    out = subprocess.run(
        [
            str(cli),
            "-readonly",
            "-csv",
            str(gbatch.db),
            "-c",
            "select key, status, length(text) > 0 as answered from seed order by key",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert out.splitlines() == [
        "key,status,answered",
        "request_1,succeeded,true",
        "request_2,succeeded,true",
    ]
