"""Named steps where the kill -9 test suite may stop this process dead.

``GBATCH_CRASH_AT=<point>`` makes the process SIGKILL itself on reaching that point, so the
tests can prove that a crash between any two side effects is recovered on restart with no
second job and no answer lost. Unset (always, outside tests), ``reached`` does nothing.
Called at each step by submit, follow and the results ingest.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "intent_recorded",  # job intents written, nothing uploaded
    "uploaded",  # the file is uploaded, its name not yet recorded
    "create_sent",  # phase `submitting` written, create not yet called
    "create_answered",  # the service created the job, its name not yet recorded
    "job_recorded",  # the job's name recorded
    "downloaded",  # results on disk, phase not yet `downloaded`
    "ingest_mid_transaction",  # inside the results transaction, before commit
    "ingest_committed",  # results committed, phase not yet `ingested`
)


def reached(point: str) -> None:
    if os.environ.get("GBATCH_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
