"""One typed settings object, read from ``SHAREDCARE_*`` environment variables.

Defaults are the embedded mode: SQLite under ``./var``, no other service needed.
Every setting is documented in ``docs/settings.md``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Platform configuration; the defaults give a working embedded instance."""

    model_config = SettingsConfigDict(env_prefix="SHAREDCARE_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, description="Port the HTTP server listens on.")
    data_dir: Path = Field(Path("./var"), description="Folder for the SQLite file and local files.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; unset means SQLite at DATA_DIR/sharedcare.db. "
        "Production: postgresql+psycopg://user@host/db.",
    )
    base_url: str | None = Field(
        None, description="Public base URL of the FHIR endpoint; unset means derived from each request."
    )
    max_request_bytes: int = Field(
        50 * 1024 * 1024, description="Largest accepted request body; larger requests get 413 unread."
    )
    default_page_size: int = Field(20, description="Search page size when _count is not given.")
    max_page_size: int = Field(1000, description="Largest _count a search may ask for.")
    default_total: str = Field(
        "accurate", description="Bundle.total mode when _total is not given: none, estimate or accurate."
    )
    validate_on_write: bool = Field(
        True, description="Validate every resource written (structure, bindings)."
    )
    demo_data: bool = Field(True, description="Load demo data on first start of `sharedcare serve`.")
    log_level: str = Field("info", description="Log level of the server.")

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sharedcare.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
