"""Settings, read once at start-up from ``MODELHOST_*`` environment variables.

Nested models use ``__`` in the variable name: ``MODELHOST_SERVER__PORT=9000``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.path.expanduser("~/.modelhost"))


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


class ServerSettings(BaseModel):
    """How the HTTP server listens."""

    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` to listen on every interface."""
    port: int = 8000
    """TCP port of the HTTP API."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """TCP port of the Open Inference Protocol v2 gRPC service (on ``host``); 0 turns it off."""
    workers: int = 1
    """Server processes sharing the port."""
    access_log: bool = False
    """Log one line per request (off by default: it costs throughput)."""


class InferenceSettings(BaseModel):
    """How inference runs beside the event loop."""

    threads: int = Field(default_factory=_default_threads)
    """Threads that run runtime calls, so inference never blocks the event loop."""
    default_timeout_s: float = 30.0
    """Timeout of one inference when the manifest sets none."""
    default_max_request_bytes: int = 8 * 1024 * 1024
    """Largest request body when the manifest sets none."""
    load_on_start: bool = True
    """Load every staging and production version when the server starts."""
    refresh_interval_s: float = 2.0
    """How often a server re-reads the registry to pick up pushes, promotions and aliases."""


class DemoSettings(BaseModel):
    """The built-in demo models."""

    enabled: bool = True
    """Build and register the demo models (iris, minilm, gemma-270m) on first start."""
    models: list[str] = Field(default_factory=lambda: ["iris", "minilm", "gemma-270m"])
    """Which demo models to build; a missing optional extra skips that model with a warning."""


class Settings(BaseSettings):
    """Every setting of modelhost; one nested model per subsystem."""

    model_config = SettingsConfigDict(
        env_prefix="MODELHOST_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(default_factory=_default_home)
    """Where the embedded database, the artifact store and demo builds live."""
    database_url: str | None = None
    """SQLAlchemy URL of the registry database; default: a SQLite file under ``home``."""
    server: ServerSettings = Field(default_factory=ServerSettings)
    """The HTTP server."""
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    """The inference pool, timeouts and loading."""
    demo: DemoSettings = Field(default_factory=DemoSettings)
    """The built-in demo models."""

    @property
    def resolved_database_url(self) -> str:
        """The registry database URL, defaulting to ``sqlite:///$MODELHOST_HOME/modelhost.db``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'modelhost.db'}"

    @property
    def artifact_dir(self) -> Path:
        """Root of the content-addressed artifact store."""
        return self.home / "artifacts"
