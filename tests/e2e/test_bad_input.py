"""Bad manifests and bad data through the CLI: clear messages, and nothing stored is touched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runner.emulator import Emulator
from tests.conftest import API_KEY, Gbatch

GOOD = (
    "model: gemini-2.5-flash\nsource: {rows: [{a: 1}, {a: 2}]}\nprompt: {template: 'A {{ a }}'}\n"
)


def fingerprint(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-" for p in paths]


@pytest.mark.parametrize(
    ("manifest", "files", "message"),
    [
        ("model: [oops\n", {}, "bad.yaml:2:1: invalid YAML"),
        (
            "model: gemini-2.5-flash\nsource: {rows: [{a: 1}]}\nprompt: {template: x}\nmodle: y\n",
            {},
            "bad.yaml:4:1: modle: unknown field 'modle'",
        ),
        (
            "model: gemini-2.5-flash\nsource: {rows: [{a: 1}]}\nprompt: {template: x}\n"
            "generation: {temperature: hot}\n",
            {},
            "generation.temperature: input should be",
        ),
        (
            "model: gemini-2.5-flash\nsource: {path: missing.csv}\nprompt: {template: x}\n",
            {},
            "bad.yaml:2:16: source.path: no such file",
        ),
        (
            "model: gemini-2.5-flash\nsource: {path: d.csv}\nprompt: {template: '{{ nme }}'}\n",
            {"d.csv": "name\nx\n"},
            "bad.yaml:3:20: prompt.template: the template uses {{ nme }}",
        ),
        (
            "model: gemini-2.5-flash\nsource: {path: d.csv, key: id}\nprompt: {template: x}\n",
            {"d.csv": "id\n1\n2\n1\n"},
            "source.key: duplicate keys: '1' at rows 1, 3",
        ),
        (
            "model: gemini-2.5-flash\nsource: {path: ../x.csv}\nprompt: {template: x}\n",
            {},
            "source.path: '../x.csv' resolves outside the manifest root",
        ),
        (
            "model: gemini-2.5-flash\nsource: {query: \"select * from read_csv('/etc/passwd')\"}\n"
            "prompt: {template: x}\n",
            {},
            "source.query: the query may not read '/etc/passwd': it is outside the manifest root",
        ),
        (
            "model: gemini-2.5-flash\nsource: {query: \"attach 'x.db'\"}\nprompt: {template: x}\n",
            {},
            "source.query: only SELECT is allowed, got ATTACH",
        ),
        (
            "model: gemini-2.5-flash\nsource: {query: 'select 1 a; select 2 a'}\n"
            "prompt: {template: x}\n",
            {},
            "source.query: expected one SELECT statement",
        ),
        (
            "model: gemini-2.5-flash\nsource: {query: \"copy (select 1) to 'out.csv'\"}\n"
            "prompt: {template: x}\n",
            {},
            "only SELECT is allowed, got COPY",
        ),
        (
            "model: gemini-2.5-flash\nsource: {query: 'install httpfs'}\nprompt: {template: x}\n",
            {},
            "only SELECT is allowed",
        ),
        (
            "model: gemini-2.5-flash\nsource: {query: 'set threads = 1'}\nprompt: {template: x}\n",
            {},
            "only SELECT is allowed, got SET",
        ),
        ("", {}, "bad.yaml: empty manifest: the file holds no YAML document"),
        ("\n  \n", {}, "bad.yaml: empty manifest"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", {}, "bad.yaml:1:68: nested deeper than 64 levels"),
        (
            'model: gemini-2.5-flash\nsource: {path: "d\\0.csv"}\nprompt: {template: x}\n',
            {},
            "bad.yaml:2:16: source.path: 'd\\x00.csv' is not a usable path: embedded null byte",
        ),
        (
            "model: gemini-2.5-flash\nsource: {path: d.csv, timeout: 1m}\nprompt: {template: x}\n",
            {"d.csv": "a\n1\n"},
            "bad.yaml:2:9: source: timeout applies only to query",
        ),
    ],
)
def test_each_bad_manifest_gets_its_message_and_nothing_changes(
    gbatch: Gbatch, emulator: Emulator, manifest: str, files: dict[str, str], message: str
) -> None:
    gbatch.write("good.yaml", GOOD)
    assert gbatch("apply", "manifests", "--wait").code == 0
    stored = [gbatch.db, gbatch.state_dir / "state.sqlite"]
    before = fingerprint(stored)
    for name, text in files.items():
        gbatch.write(name, text)
    gbatch.write("bad.yaml", manifest)
    validate = gbatch("validate", "manifests")
    assert validate.code == 2
    assert message in validate.err, validate.err
    assert "ok" in validate.out and "good.yaml" in validate.out  # the good one still passes
    apply = gbatch("apply", "manifests", "--wait")
    assert apply.code == 2 and message in apply.err
    assert fingerprint(stored) == before
    assert emulator.count("batches.create") == 1
    assert API_KEY not in validate.err + apply.err


def test_a_query_source_reads_files_under_its_root(gbatch: Gbatch) -> None:
    gbatch.write("data/people.csv", "name,lang\nAda,en\nBo,sv\nCy,en\n")
    gbatch.write(
        "q.yaml",
        "model: gemini-2.5-flash\nsource:\n  key: name\n  query: "
        "\"select * from read_csv('data/people.csv') where lang = 'en'\"\n"
        "prompt: {template: 'Hi {{ name }}'}\n",
    )
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert gbatch.sql("select name, text from q order by name") == [
        ("Ada", "echo: Hi Ada"),
        ("Cy", "echo: Hi Cy"),
    ]


def test_query_refuses_writes_and_file_reads(gbatch: Gbatch) -> None:
    gbatch.write("good.yaml", GOOD)
    assert gbatch("apply", "manifests", "--wait").code == 0
    for sql in (
        "delete from good",
        "select * from read_csv('/etc/passwd')",
        "attach 'x.db' as x",
        "select 1; select 2",
    ):
        result = gbatch("query", sql)
        assert result.code != 0 and result.err, sql
    assert gbatch.sql("select count(*) from good") == [(2,)]


def test_a_query_source_refuses_a_root_with_a_link_leading_out(
    gbatch: Gbatch, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\nhunter2\n")
    (gbatch.manifests / "link.csv").symlink_to(outside)
    gbatch.write(
        "q.yaml",
        'model: gemini-2.5-flash\nsource: {query: "select * from '
        "read_csv('link.csv')\"}\nprompt: {template: '{{ secret }}'}\n",
    )
    result = gbatch("validate", "manifests")
    assert result.code == 2 and "links outside the manifest root" in result.err
