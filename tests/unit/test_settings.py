"""Settings precedence: init > environment > .env file > defaults, one test per pair."""

from pathlib import Path

import pytest

from runner.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "GBATCH_DB",
        "GBATCH_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "GBATCH_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    assert Settings().db == Path("gbatch.duckdb")


def test_dotenv_beats_defaults() -> None:
    Path(".env").write_text("GBATCH_DB=from-dotenv.duckdb\n")
    assert Settings().db == Path("from-dotenv.duckdb")


def test_environment_beats_dotenv(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("GBATCH_DB=from-dotenv.duckdb\n")
    monkeypatch.setenv("GBATCH_DB", "from-env.duckdb")
    assert Settings().db == Path("from-env.duckdb")


def test_init_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GBATCH_DB", "from-env.duckdb")
    assert Settings(db=Path("from-init.duckdb")).db == Path("from-init.duckdb")


def test_the_sdk_variables_are_honoured_and_the_key_never_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")
    settings = Settings()
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "sk-very-secret"
    assert settings.base_url == "http://127.0.0.1:9"
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in str(settings)
