"""Media files named by a source column: each distinct file uploaded once (by content), sent
as fileData, answered; paths outside the root are refused."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

from runner.emulator import Emulator
from tests.conftest import Gbatch, uploads

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


def photos(gbatch: Gbatch, rows: str) -> None:
    (gbatch.manifests / "img").mkdir(exist_ok=True)
    (gbatch.manifests / "img" / "a.png").write_bytes(PNG)
    (gbatch.manifests / "img" / "same-as-a.png").write_bytes(PNG)
    (gbatch.manifests / "img" / "b.pdf").write_bytes(b"%PDF-1.4 tiny")
    gbatch.write("photos.csv", "id,photo,caption\n" + rows)
    gbatch.write(
        "photos.yaml",
        "model: gemini-2.5-flash\nsource: {path: photos.csv, key: id}\n"
        "prompt: {template: 'Describe: {{ caption }}', media: [photo]}\n",
    )


def media_uploads(emulator: Emulator) -> list[str]:
    return [f.mime_type for f in uploads(emulator) if f.mime_type != "application/jsonl"]


def test_each_distinct_file_is_uploaded_once_and_named_in_its_request(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    photos(gbatch, "1,img/a.png,red\n2,img/b.pdf,blue\n3,img/same-as-a.png,red again\n4,,none\n")
    result = gbatch("apply", "manifests", "--wait")
    assert result.code == 0, result.err
    assert sorted(media_uploads(emulator)) == ["application/pdf", "image/png"]
    (jsonl,) = [f for f in uploads(emulator) if f.mime_type == "application/jsonl"]
    requests = {
        line["key"]: line["request"]
        for line in map(json.loads, jsonl.path.read_bytes().splitlines())
    }
    first, third = requests["1"]["contents"][0]["parts"], requests["3"]["contents"][0]["parts"]
    assert first[0]["fileData"] == third[0]["fileData"]  # same content, one upload
    assert first[0]["fileData"]["fileUri"].startswith(emulator.base_url)
    assert first[1] == {"text": "Describe: red"}
    assert requests["4"]["contents"][0]["parts"] == [{"text": "Describe: none"}]
    rows = gbatch.sql("select count(*) filter (status = 'succeeded') from photos")
    assert rows == [(4,)]
    columns = {r[0] for r in gbatch.sql("describe photos")}
    assert "photo" in columns and not any(c.startswith("__media") for c in columns)
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert len(media_uploads(emulator)) == 2  # nothing new to send or upload


def test_a_media_path_outside_the_root_is_refused(gbatch: Gbatch, emulator: Emulator) -> None:
    photos(gbatch, "1,../../etc/passwd.png,x\n")
    result = gbatch("validate", "manifests")
    assert result.code == 2
    assert "photos.yaml" in result.err and "prompt.media" in result.err
    assert media_uploads(emulator) == []


def test_a_file_whose_upload_is_near_expiry_is_uploaded_again(
    gbatch: Gbatch, emulator: Emulator
) -> None:
    photos(gbatch, "1,img/a.png,red\n")
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert media_uploads(emulator) == ["image/png"]
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with sqlite3.connect(gbatch.state_dir / "state.sqlite") as db:  # 47 h later, say
        db.execute("update media set expire_time = ?", (soon,))
    with (gbatch.manifests / "photos.csv").open("a") as rows:
        rows.write("2,img/same-as-a.png,red twice\n")  # needs a.png's content again
    assert gbatch("apply", "manifests", "--wait").code == 0
    assert media_uploads(emulator) == ["image/png", "image/png"]
    assert gbatch.sql("select count(*) filter (status = 'succeeded') from photos") == [(2,)]
