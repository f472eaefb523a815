"""A fake Backend at the project's own port (runner.core.ports.Backend), for engine tests.

It answers like a tiny batch service: uploads are kept, jobs succeed at the first look, the
answer echoes the prompt. ``history`` records every call; ``enqueue`` makes the next calls
of a method raise the given errors ("create" refuses before creating; "create_lost" creates
the job and then loses the reply, like a timeout after the server acted).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from runner.core.clock import Clock, SystemClock
from runner.core.jobs import JobState, RemoteJob
from runner.core.ports import UploadedFile


class FakeBackend:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.files: dict[str, list[str]] = {}
        self.jobs: dict[str, RemoteJob] = {}
        self.inputs: dict[str, list[str]] = {}
        self.history: list[tuple[str, str]] = []
        self._errors: dict[str, list[Exception]] = defaultdict(list)
        self._ids = itertools.count(1)
        self.api_errors: dict[str, int] = {}
        self.hold = False  # new jobs stay PENDING until released or cancelled
        self.list_lag = 0  # listings that do not show a new job yet (the real list may lag)
        self.answered_before_cancel = 0  # lines a cancelled job still answered
        self._unlisted: dict[str, int] = {}

    def enqueue(self, method: str, *errors: Exception) -> None:
        self._errors[method].extend(errors)

    def _call(self, method: str, detail: str = "") -> None:
        self.history.append((method, detail))
        if self._errors[method]:
            raise self._errors[method].pop(0)

    def _expires(self, ttl_s: float) -> str:
        return (self.clock.now() + timedelta(seconds=ttl_s)).isoformat()

    def _file(self, name: str) -> UploadedFile:
        return UploadedFile(
            name=name, uri=f"https://fake/{name}", expire_time=self._expires(48 * 3600)
        )

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.history if m == method)

    def upload_jsonl(self, path: Path, *, display_name: str) -> UploadedFile:
        self._call("upload", display_name)
        name = f"files/f{next(self._ids)}"
        self.files[name] = path.read_text().splitlines()
        return UploadedFile(
            name=name, uri=f"https://fake/{name}", expire_time=self._expires(48 * 3600)
        )

    def file_exists(self, name: str) -> bool:
        self._call("file_exists", name)
        return name in self.files

    def delete_file(self, name: str) -> None:
        self._call("delete_file", name)
        self.files.pop(name, None)

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        src_file: str | None,
        inline: Path | None,
        task: str = "generate",
    ) -> RemoteJob:
        self._call("create", display_name)
        name = f"batches/b{next(self._ids)}"
        lines = (
            self.files[src_file]
            if src_file
            else (inline.read_text().splitlines() if inline else [])
        )
        self.inputs[name] = lines
        self._unlisted[name] = self.list_lag
        self.jobs[name] = RemoteJob(
            name=name,
            display_name=display_name,
            state=JobState.PENDING if self.hold else JobState.SUCCEEDED,
            result_file=None if self.hold else f"files/batch-{name[8:]}",
            request_count=len(lines),
        )
        if self._errors["create_lost"]:
            raise self._errors["create_lost"].pop(0)
        return RemoteJob(name=name, display_name=display_name, state=JobState.PENDING)

    def list_jobs(self, *, max_pages: int | None = None) -> Iterator[RemoteJob]:
        self._call("list")
        for job in reversed(list(self.jobs.values())):
            if self._unlisted.get(job.name, 0) > 0:
                self._unlisted[job.name] -= 1
                continue
            yield job

    def release(self) -> None:
        """Every held job succeeds now."""
        for name, job in self.jobs.items():
            if job.state is JobState.PENDING:
                self.jobs[name] = replace(
                    job, state=JobState.SUCCEEDED, result_file=f"files/batch-{name[8:]}"
                )

    def get_job(self, name: str) -> RemoteJob:
        self._call("get", name)
        return self.jobs[name]

    def cancel_job(self, name: str) -> None:
        self._call("cancel", name)
        job = self.jobs[name]
        if not job.state.terminal:
            partial = f"files/batch-{name[8:]}" if self.answered_before_cancel else None
            self.jobs[name] = replace(job, state=JobState.CANCELLED, result_file=partial)

    def download_results(
        self, job: RemoteJob, dest: Path, *, keys: Collection[str] | None = None
    ) -> None:
        self._call("download", job.name)
        lines = self.inputs[job.name]
        if self.jobs[job.name].state is JobState.CANCELLED:
            lines = lines[: self.answered_before_cancel]
        with dest.open("w") as out:
            for line in lines:
                entry = json.loads(line)
                parts = entry["request"]["contents"][-1]["parts"]
                text = next(p["text"] for p in parts if "text" in p)
                out.write(json.dumps({"key": entry["key"], "response": _answer(text)}) + "\n")

    def count_tokens(self, *, model: str, contents: list[dict[str, Any]]) -> int:
        self._call("count_tokens")
        return max(1, len(json.dumps(contents)) // 4)

    def create_cache(
        self, *, model: str, body: dict[str, Any], ttl_s: float, display_name: str
    ) -> tuple[str, str]:
        self._call("create_cache", display_name)
        return f"cachedContents/{next(self._ids)}", self._expires(ttl_s)

    def find_cache(self, display_name: str) -> tuple[str, str] | None:
        self._call("find_cache", display_name)
        return None

    def extend_cache(self, name: str, *, ttl_s: float) -> str:
        self._call("extend_cache", name)
        return self._expires(ttl_s)

    def delete_cache(self, name: str) -> None:
        self._call("delete_cache", name)

    def upload_media(self, path: Path, *, mime_type: str, display_name: str) -> UploadedFile:
        self._call("upload_media", str(path))
        name = f"files/m{next(self._ids)}"
        return UploadedFile(
            name=name, uri=f"https://fake/{name}", expire_time=self._expires(48 * 3600)
        )


def _answer(text: str) -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": f"echo: {text}"}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": "fake-001",
    }
