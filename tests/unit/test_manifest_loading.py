"""The loader: both manifest shapes, located errors, caps, path confinement, digests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.core.loader import MAX_MANIFEST_BYTES, discover, load_file, load_paths, load_text
from runner.errors import ManifestErrors

FULL = """\
apiVersion: gbatch/v1
kind: Batch
metadata:
  name: copy
spec:
  model: gemini-2.5-flash
  source: {path: data.csv, key: sku}
  prompt:
    template: "Describe {{ name }}."
  generation: {temperature: 0.2}
"""


def load(text: str, tmp_path: Path, name: str = "m.yaml"):  # type: ignore[no-untyped-def]
    return load_text(text, path=tmp_path / name, root=tmp_path)


def errors_of(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ManifestErrors) as caught:
        load(text, tmp_path)
    return [str(e) for e in caught.value.errors]


def test_the_seed_three_liner_is_a_manifest_named_after_its_file(tmp_path: Path) -> None:
    (item,) = load(
        "model: gemini-2.5-flash\nsource:\n  requests: batch.jsonl\n",
        tmp_path,
        "Seed Requests.yaml",
    )
    assert item.manifest.name == "seed-requests"
    assert item.manifest.table == "seed_requests"
    assert str(item.locate("spec", "source", "requests")) == f"{tmp_path}/Seed Requests.yaml:3:13"


def test_the_full_form_and_several_documents(tmp_path: Path) -> None:
    text = FULL + "---\n" + FULL.replace("name: copy", "name: other")
    items = load(text, tmp_path)
    assert [i.manifest.name for i in items] == ["copy", "other"]
    assert [i.line for i in items] == [1, 12]
    assert str(items[1].locate("spec", "generation", "temperature")).endswith(":21:29")


def test_unnamed_short_documents_in_one_file_get_numbered_names(tmp_path: Path) -> None:
    doc = "model: gemini-2.5-flash\nsource: {rows: [{a: 1}]}\nprompt: {template: x}\n"
    names = [i.manifest.name for i in load(doc + "---\n" + doc, tmp_path, "jobs.yaml")]
    assert names == ["jobs", "jobs-2"]


def test_every_problem_is_reported_with_line_column_and_field(tmp_path: Path) -> None:
    bad = FULL.replace("temperature: 0.2", "tmperature: 0.2, max_output_tokens: lots")
    found = errors_of(bad, tmp_path)
    path = tmp_path / "m.yaml"
    assert found == [
        f"{path}:10:16: spec.generation.tmperature: unknown field 'tmperature' "
        "(did you mean 'temperature'?)",
        f"{path}:10:52: spec.generation.max_output_tokens: input should be a valid integer, "
        "unable to parse string as an integer, got 'lots'",
    ]


def test_missing_fields_and_exclusive_sources(tmp_path: Path) -> None:
    found = errors_of("source: {path: a.csv, rows: [{a: 1}]}\nprompt: {template: x}\n", tmp_path)
    assert any("model: required field missing" in e for e in found)
    assert any("exactly one of path, requests, query, rows" in e for e in found)


def test_a_bad_placeholder_is_located_at_the_template(tmp_path: Path) -> None:
    (error,) = errors_of(FULL.replace("{{ name }}", "{{ name | upper }}"), tmp_path)
    assert ":9:15: spec.prompt.template: placeholder" in error


@pytest.mark.parametrize("path", ["../secret.csv", "/etc/passwd", "sub/../../x.csv"])
def test_paths_outside_the_root_are_refused(tmp_path: Path, path: str) -> None:
    (error,) = errors_of(FULL.replace("data.csv", path), tmp_path)
    assert ":7:18: spec.source.path:" in error
    assert "outside the manifest root" in error or "is absolute" in error


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.csv").write_text("a\n1\n")
    os.symlink(tmp_path / "secret.csv", root / "data.csv")
    with pytest.raises(ManifestErrors, match="outside the manifest root"):
        load_text(FULL, path=root / "m.yaml", root=root)


def test_yaml_syntax_errors_point_at_the_problem(tmp_path: Path) -> None:
    (error,) = errors_of("model: [unclosed\nsource: x\n", tmp_path)
    assert error.startswith(f"{tmp_path}/m.yaml:2:") and "invalid YAML" in error


def test_a_billion_laughs_document_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [{','.join(['*' + previous] * 9)}]")
    started = time.monotonic()
    (error,) = errors_of("\n".join(lines) + "\n", tmp_path)
    assert "YAML nodes" in error and time.monotonic() - started < 2


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (MAX_MANIFEST_BYTES + 10) + "\n")
    with pytest.raises(ManifestErrors, match="capped"):
        load_file(big, root=tmp_path)


def test_duplicate_names_across_files_name_both(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(FULL)
    (tmp_path / "b.yaml").write_text(FULL)
    loaded, errors = load_paths([tmp_path])
    assert [i.path.name for i in loaded] == ["a.yaml"]
    assert len(errors) == 1 and "a.yaml:1" in str(errors[0]) and "b.yaml:4" in str(errors[0])


def test_discover_skips_hidden_temp_and_non_yaml_files(tmp_path: Path) -> None:
    for name in (
        "a.yaml",
        "b.yml",
        ".hidden.yaml",
        ".git/x.yaml",
        "c.yaml~",
        "d.yaml.swp",
        "notes.txt",
        "sub/e.yaml",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p, _ in discover([tmp_path])]
    assert found == ["a.yaml", "b.yml", "sub/e.yaml"]


def test_the_digest_ignores_formatting_and_changes_with_meaning(tmp_path: Path) -> None:
    (first,) = load(FULL, tmp_path)
    reformatted = FULL.replace("{path: data.csv, key: sku}", "\n    key: sku\n    path: data.csv")
    (second,) = load("# a comment\n" + reformatted, tmp_path)
    (changed,) = load(FULL.replace("0.2", "0.3"), tmp_path)
    assert first.digest == second.digest != changed.digest


@given(
    st.permutations(
        [
            "model: gemini-2.5-flash",
            "source: {rows: [{a: 1}]}",
            "prompt: {template: 'x {{ a }}'}",
            "generation: {seed: 3}",
        ]
    )
)
def test_digest_is_invariant_under_key_order(lines: list[str]) -> None:
    path = Path("/m/x.yaml")
    (item,) = load_text("\n".join(lines) + "\n", path=path, root=Path("/m"))
    (reference,) = load_text(
        "model: gemini-2.5-flash\nsource: {rows: [{a: 1}]}\n"
        "prompt: {template: 'x {{ a }}'}\ngeneration: {seed: 3}\n",
        path=path,
        root=Path("/m"),
    )
    assert item.digest == reference.digest


def test_an_empty_cache_block_is_refused(tmp_path: Path) -> None:
    (error,) = errors_of(FULL + "  cache: {ttl: 2h}\n", tmp_path)
    assert ":11:10: spec.cache: the cache holds nothing: give it files or text" in error


def test_a_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    (error,) = errors_of(FULL + "  model: gemini-2.5-pro\n", tmp_path)
    assert "duplicate key 'model' (first at line" in error


DEEP = {
    "flow sequences": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "1:68"),
    "flow mappings": ("a: " + "{b: " * 5000 + "1" + "}" * 5000 + "\n", "1:257"),
    "block mappings": (
        "".join(" " * i + "k:\n" for i in range(900)) + " " * 900 + "k: 1\n",
        "65:65",
    ),
    "complex keys": ("? " * 5000 + "x\n", "1:131"),
}


@pytest.mark.parametrize("kind", DEEP)
def test_a_deeply_nested_file_is_refused_at_its_line_before_anything_recurses(
    tmp_path: Path, kind: str
) -> None:
    text, where = DEEP[kind]
    (tmp_path / "deep.yaml").write_text(text)
    loaded, errors = load_paths([tmp_path])  # what the daemon calls: it must not raise
    assert loaded == []
    assert [str(e) for e in errors] == [
        f"{tmp_path}/deep.yaml:{where}: nested deeper than 64 levels"
    ]


def test_64_levels_are_fine_and_aliases_cannot_nest_deeper(tmp_path: Path) -> None:
    inner = "[" * 40 + "1" + "]" * 40
    ok = "model: gemini-2.5-flash\nsource: {rows: [{a: " + inner + "}]}\nprompt: {template: x}\n"
    (item,) = load(ok, tmp_path)
    assert item.manifest.spec.source.rows is not None
    # each half is shallow when composed; the alias puts one under the other when built
    aliased = f"a: &a {inner}\nb: {'[' * 40}*a{']' * 40}\n"
    (error,) = errors_of(aliased, tmp_path)
    assert error == f"{tmp_path}/m.yaml:1:31: nested deeper than 64 levels"  # inside *a


def test_the_size_cap_fires_before_depth_and_the_node_cap_before_building(
    tmp_path: Path,
) -> None:
    deep_and_big = tmp_path / "big.yaml"
    deep_and_big.write_text(
        "a: " + "[" * (MAX_MANIFEST_BYTES // 2) + "]" * (MAX_MANIFEST_BYTES // 2)
    )
    with pytest.raises(ManifestErrors, match="capped at"):
        load_file(deep_and_big, root=tmp_path)
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in "bcdefghi":
        lines.append(f"{level}: &{level} [{','.join(['*' + chr(ord(level) - 1)] * 9)}]")
    (error,) = errors_of("\n".join(lines) + "\n", tmp_path)
    assert "more than 100000 YAML nodes" in error


@pytest.mark.parametrize(
    "text", ["", "  \n\t\n", "# everything commented out\n", "---\n", "--- # off\n---\n"]
)
def test_an_empty_file_is_an_invalid_manifest_located_at_the_file(
    tmp_path: Path, text: str
) -> None:
    (tmp_path / "empty.yaml").write_text(text)
    loaded, errors = load_paths([tmp_path])
    assert loaded == []
    (error,) = errors
    assert error.location is not None and error.location.path == tmp_path / "empty.yaml"
    assert str(error).startswith(f"{tmp_path}/empty.yaml: empty manifest")


def test_an_unreadable_manifest_is_reported_not_skipped(tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere.yaml", tmp_path / "dangling.yaml")
    os.mkfifo(tmp_path / "pipe.yaml")  # opening it for reading must not block
    loaded, errors = load_paths([tmp_path])
    assert loaded == []
    by_path = {e.location.path: e.reason for e in errors if e.location is not None}
    assert by_path == {
        tmp_path / "dangling.yaml": "cannot read: No such file or directory",
        tmp_path / "pipe.yaml": "not a regular file",
    }


@pytest.mark.parametrize(
    ("field", "where"),
    [
        ('source: {path: "data\\0.csv"}', ":7:18: spec.source.path:"),
        ('source: {requests: "r\\0.jsonl"}', ":7:22: spec.source.requests:"),
    ],
)
def test_a_nul_byte_in_a_path_is_a_located_error(tmp_path: Path, field: str, where: str) -> None:
    text = FULL.replace("source: {path: data.csv, key: sku}", field)
    if "requests" in field:
        text = text.replace('  prompt:\n    template: "Describe {{ name }}."\n', "")
    (error,) = errors_of(text, tmp_path)
    assert where in error and "is not a usable path: embedded null byte" in error


def test_a_nul_byte_in_a_cache_file_is_a_located_error(tmp_path: Path) -> None:
    (error,) = errors_of(FULL + '  cache: {files: ["ok.md", "b\\0d.md"]}\n', tmp_path)
    assert ":11:28: spec.cache.files.1: 'b\\x00d.md' is not a usable path" in error


def test_a_trailing_document_separator_is_not_a_document(tmp_path: Path) -> None:
    (item,) = load(FULL + "---\n", tmp_path)
    assert item.manifest.name == "copy"


def test_a_query_timeout_is_no_new_version(tmp_path: Path) -> None:
    query = "model: gemini-2.5-flash\nsource: {query: 'select 1 a'}\nprompt: {template: x}\n"
    (default,) = load(query, tmp_path)
    (longer,) = load(query.replace("'select 1 a'", "'select 1 a', timeout: 20m"), tmp_path)
    assert longer.manifest.spec.source.timeout_s == 1200
    assert default.manifest.spec.source.timeout_s == 300
    assert longer.digest == default.digest  # operational: changing it re-plans nothing
    (error,) = errors_of(query.replace("'select 1 a'", "'select 1 a', timeout: 0s"), tmp_path)
    assert "source.timeout: timeout must be longer than 0s" in error
