"""Settings (environment, ``PROVENANT_`` prefix) and the routes file model.

Nothing here is built at import time: ``Settings()`` and ``load_routes()`` are called by the
app factory and the CLI, so tests pass their own values in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigError


class Settings(BaseSettings):
    """Process settings. Every field can be set as ``PROVENANT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PROVENANT_", extra="ignore")

    database_url: str = "sqlite:///./data/provenant.db"
    config: Path = Path("provenant.yaml")
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    key_cache_ttl_s: float = Field(default=10.0, ge=0)
    writer_max_batch: int = Field(default=512, ge=1)
    store_probe_interval_s: float = Field(default=1.0, gt=0)
    upstream_connections: int = Field(default=256, ge=1)
    policy_bundle: Path | None = Field(
        default=None, description="policy bundle YAML; default policies/default.yaml if present"
    )
    rate_limit_rps: float = Field(
        default=0, ge=0, description="requests per second per API key; 0 = no limit"
    )
    rate_limit_burst: int = Field(default=0, ge=0, description="burst per key; 0 = 2 x rate")
    max_json_depth: int = Field(default=64, ge=4, le=512)
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    # privacy
    retention_floor_days: int = Field(
        default=183, ge=0, description="no content younger than this is erased by retention"
    )
    retention_interval_s: float = Field(
        default=3600, ge=0, description="how often the gateway runs retention; 0 = never"
    )
    # integrity log
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 PEM key; default <data_dir>/signing-key.pem, made once"
    )
    log_origin: str = Field(default="provenant.local/audit-log", min_length=1, max_length=200)
    seal_interval_s: float = Field(default=2.0, gt=0)
    max_merge_delay_s: int = Field(default=60, ge=1)

    def signing_key_path(self) -> tuple[Path, bool]:
        """The key file, and whether it may be generated (only the embedded default may)."""
        if self.signing_key_file is not None:
            return self.signing_key_file, False
        return self.data_dir / "signing-key.pem", True


class Timeouts(BaseModel):
    """Upstream timeouts in seconds."""

    model_config = ConfigDict(extra="forbid")

    connect: float = Field(default=5.0, gt=0)
    read: float = Field(default=60.0, gt=0)
    total: float = Field(default=300.0, gt=0)


class OpenAIRoute(BaseModel):
    """A route that proxies to an OpenAI-compatible upstream."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: Literal["openai"] = "openai"
    upstream: str = Field(description="base URL ending in /v1")
    upstream_model: str | None = None
    api_key_env: str | None = None
    timeouts: Timeouts = Timeouts()

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("upstream must be an http:// or https:// base URL")
        return value.rstrip("/")


Route = Annotated[OpenAIRoute, Field(discriminator="kind")]


class RoutesFile(BaseModel):
    """The routes file (``provenant.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    routes: list[Route] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("routes"), list):
            data = {
                **data,
                "routes": [
                    {"kind": "openai", **r} if isinstance(r, dict) else r for r in data["routes"]
                ],
            }
        return data

    @field_validator("routes")
    @classmethod
    def _unique_names(cls, routes: list[Route]) -> list[Route]:
        seen: set[str] = set()
        for route in routes:
            if route.name in seen:
                raise ValueError(f"duplicate route name {route.name!r}")
            seen.add(route.name)
        return routes

    def by_name(self) -> dict[str, Route]:
        """Routes keyed by the model name clients send."""
        return {route.name: route for route in self.routes}


def load_routes(path: Path) -> RoutesFile:
    """Read and validate the routes file; raise ConfigError naming the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"routes file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    try:
        return RoutesFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
