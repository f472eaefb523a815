"""A local Gemini API emulator that the unmodified google-genai SDK talks to over HTTP.

Serves the calls gbatch makes (resumable upload, files, batches as Operations, caches,
countTokens, the error envelope) with a deterministic model and injectable faults. Used by
the tests, the demo and ``gbatch emulator``. Imports nothing of the runner.

    with Emulator(EmulatorConfig()) as emu:
        client = genai.Client(api_key="x", http_options={"base_url": emu.base_url})
        emu.add_fault(Fault(endpoint="batches.create", status=429, times=3))
        emu.count("batches.create")

By default it answers in the shapes recorded from the real service (tests/fixtures/recorded,
whose README names each source): 36-character lowercase batch ids, the result file
``files/batch-<batch id>`` (which ``files.get`` / ``files.delete`` refuse with 400, the id
being over 40 characters, while download works), ``modelVersion`` as the model id, usage with
``promptTokensDetails``, ``batchStats`` from creation on, a cancelled job ending with the
Operation ``error`` {code 1}, and failed lines carrying a google.rpc.Status (gRPC ``code``
and ``message``, no ``status``). Embeddings batches (``asyncBatchEmbedContent``) are the same
jobs with EmbedContent lines (deterministic unit vectors, ``tokenCount``); they count as
``batches.create`` and take the same faults (``match=":asyncBatchEmbedContent"`` narrows a
call fault to them).

Faults (``Emulator.add_fault``, or POST the same fields as JSON to ``/_emulator/faults``).
Each applies to the first ``times`` matching calls (default 1; None: every one); ``endpoint``
names the call (``files.upload``, ``files.download``, ``batches.create``, ``batches.list``,
``batches.get``, ..., or ``*``) and ``match`` narrows it to calls whose path contains the
text (job faults: the job's display name).

Call faults:
    status=N              reply HTTP N in the error envelope (429 carries a RetryInfo of
                          ``retry_delay_s``), without acting
    kind="drop"           close the connection without a reply, without acting
    kind="hang"           act (a create creates its job), then never reply
    kind="truncate"       files.download: send half the file, then close
    kind="error_body"     files.upload: refuse the upload at its finalize chunk with HTTP 200,
                          ``x-goog-upload-status: final`` and the body ``{"error": {"code":
                          400, "message": "Unsupported MIME type: <type>", "status":
                          "INVALID_ARGUMENT"}}``, no ``file`` (python-genai #1547, #1590);
                          nothing is stored
Job faults (endpoint ``batches.create``; they shape the job created):
    job_outcome=FAILED | EXPIRED | CANCELLED | PENDING_FOREVER
    fail_lines_fraction=F   that share of lines fail with {code 13, INTERNAL}
    drop_inline_metadata    inline answers come back without their ``metadata``
                            (python-genai #2008, js-genai #1191)
    inline_out_of_order     inline answers come back in reverse input order
                            (python-genai #1909)
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType

from runner.emulator.server import Call, EmulatorHTTPServer
from runner.emulator.service import Fault, Service, default_clock, fault_from

__all__ = ["Call", "Emulator", "EmulatorConfig", "Fault", "parse_fault", "serve_forever"]


@dataclass
class EmulatorConfig:
    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path | None = None
    pending_seconds: float = 0.0
    running_seconds: float = 0.0
    expire_after_seconds: float = 48 * 3600
    seed: int = 0
    clock: Callable[[], float] = field(default=default_clock)
    # Faults in force from the start, as if added with add_fault (``gbatch emulator --fault``).
    faults: tuple[Fault, ...] = ()


class Emulator:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._temp: str | None = None
        data_dir = self.config.data_dir
        if data_dir is None:
            self._temp = tempfile.mkdtemp(prefix="gbatch-emulator-")
            data_dir = Path(self._temp)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.service = Service(
            data_dir=data_dir,
            pending_s=self.config.pending_seconds,
            running_s=self.config.running_seconds,
            expire_after_s=self.config.expire_after_seconds,
            seed=self.config.seed,
            clock=self.config.clock,
        )
        self._server = EmulatorHTTPServer((self.config.host, self.config.port), self.service)
        self._thread: threading.Thread | None = None
        for fault in self.config.faults:
            self.add_fault(replace(fault))  # a copy: taking a fault counts its times down

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Emulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name="gbatch-emulator",
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def calls(self) -> list[Call]:
        return self._server.calls_snapshot()

    def count(self, endpoint: str) -> int:
        """Served calls of an endpoint (faulted ones included), e.g. ``batches.create``."""
        return sum(1 for call in self.calls if call.endpoint == endpoint)

    def add_fault(self, fault: Fault) -> None:
        with self.service.lock:
            self.service.faults.append(fault)

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (job progress, expiry, cache TTLs)."""
        with self.service.lock:
            self.service.offset += seconds


def parse_fault(text: str) -> Fault:
    """A Fault from its JSON fields, e.g. ``{"endpoint": "files.upload", "kind": "error_body",
    "times": null}``; ValueError names what is wrong (an argparse ``type=`` for --fault)."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"fault is not JSON: {exc}") from None
    return fault_from(spec)


def serve_forever(config: EmulatorConfig) -> None:
    """Serve in the foreground until interrupted (``gbatch emulator``)."""
    emulator = Emulator(config)
    try:
        emulator._server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        emulator._server.stopping.set()
        emulator._server.server_close()
