"""The settings table in docs/settings.md stays true to the Settings object."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharedcare.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `SHAREDCARE_")}
    assert documented == {f"SHAREDCARE_{name.upper()}" for name in Settings.model_fields}


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHAREDCARE_PORT", "8123")
    monkeypatch.setenv("SHAREDCARE_DATA_DIR", "/tmp/sc-x")
    settings = Settings()
    assert settings.port == 8123
    assert settings.effective_database_url == "sqlite:////tmp/sc-x/sharedcare.db"
    monkeypatch.setenv("SHAREDCARE_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert Settings().effective_database_url == "postgresql+psycopg://u@h/db"
