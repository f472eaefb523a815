"""The one classifier of failures: gRPC codes, HTTP codes and status strings."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.core.failures import PERMANENT_STATUSES, TRANSIENT_STATUSES, classify


@pytest.mark.parametrize("code", [3, 5, 7, 9, 16])
def test_permanent_grpc_codes_of_result_lines(code: int) -> None:
    assert classify(code=code).retryable is False


@pytest.mark.parametrize("code", [4, 8, 10, 13, 14])
def test_transient_grpc_codes_of_result_lines(code: int) -> None:
    assert classify(code=code).retryable is True


@pytest.mark.parametrize("code", [0, 1, 2, 6, 11, 12, 15, 17, 99])
def test_grpc_codes_not_known_to_be_permanent_are_retried(code: int) -> None:
    assert classify(code=code).retryable is True


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 499])
def test_permanent_http_codes_of_api_errors(code: int) -> None:
    assert classify(code=code).retryable is False


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504, 599])
def test_transient_http_codes_of_api_errors(code: int) -> None:
    assert classify(code=code).retryable is True


@pytest.mark.parametrize("status", ["JOB_FAILED", "JOB_EXPIRED", "JOB_CANCELLED"])
def test_the_lines_the_engine_writes_for_a_job_without_answers_are_retried(status: str) -> None:
    assert classify(code=0, status=status).retryable is True


def test_a_known_status_wins_over_the_code() -> None:
    assert classify(code=500, status="INVALID_ARGUMENT").retryable is False
    assert classify(code=400, status="RESOURCE_EXHAUSTED").retryable is True
    assert classify(status="NOT_FOUND").retryable is classify(code=5).retryable is False


def test_an_unknown_status_leaves_the_decision_to_the_code() -> None:
    assert classify(code=3, status="SOMETHING_NEW").retryable is False
    assert classify(code=13, status="").retryable is True


@pytest.mark.parametrize("status", ["UNEXPECTED", "RESULTS_MISMATCH"])
def test_gbatchs_own_permanent_statuses(status: str) -> None:
    assert classify(code=0, status=status).retryable is False


def test_no_code_and_no_status_is_retried() -> None:
    assert classify().retryable is True


@given(code=st.one_of(st.none(), st.integers()), status=st.one_of(st.none(), st.text()))
def test_every_input_gets_a_verdict_and_unknown_statuses_never_change_it(
    code: int | None, status: str | None
) -> None:
    verdict = classify(code=code, status=status)
    assert verdict.reason
    if status not in PERMANENT_STATUSES | TRANSIENT_STATUSES:
        assert verdict == classify(code=code)
