"""Settings (environment, ``PROVENANT_`` prefix) and the routes file model.

Nothing here is built at import time: ``Settings()`` and ``load_routes()`` are called by the
app factory and the CLI, so tests pass their own values in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
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
    max_upstream_response_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="larger upstream answers are refused (502)"
    )
    # idempotency (Idempotency-Key header)
    idempotency_ttl_s: float = Field(default=86400.0, gt=0, description="how long a key holds")
    idempotency_lease_s: float = Field(
        default=360.0, gt=0, description="a key whose answer got no record is free again after"
    )
    # graceful shutdown
    shutdown_delay_s: float = Field(
        default=0.0, ge=0, le=300, description="on SIGTERM: not ready, still serving, this long"
    )
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
    verify_native: bool = Field(
        default=True,
        description="`provenant verify` walks SQLite stores with the C scan when it is built "
        "(integrity.leafscan); false forces the Python walk (same findings, slower)",
    )
    # model registry (MLflow)
    mlflow_tracking_uri: str = Field(
        default="sqlite:///./data/mlflow.db", min_length=1, max_length=2000
    )
    model_cache_ttl_s: float = Field(default=30.0, gt=0)
    model_max_staleness_s: float = Field(default=600.0, ge=0)
    mlflow_request_timeout_s: int = Field(default=10, ge=1, le=600)
    mlflow_max_retries: int = Field(default=0, ge=0, le=10)
    # document registry and retrieval
    qdrant_url: str | None = Field(default=None, description="Qdrant server; default local mode")
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path | None = Field(default=None, description="local mode; <data_dir>/qdrant")
    qdrant_prefix: str = Field(default="provenant_", pattern=r"^[A-Za-z0-9_-]{0,32}$")
    embeddings_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (…/v1) for dense embeddings"
    )
    embeddings_model: str = Field(default="text-embedding-3-small", min_length=1)
    embeddings_api_key: SecretStr | None = None
    max_document_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_document_pages: int = Field(default=2000, ge=1)
    chunk_chars: int = Field(default=1000, ge=200, le=8000)
    # auditor web UI
    ui_session_ttl_s: int = Field(
        default=8 * 3600, ge=60, le=7 * 86400, description="a UI sign-in lasts this long"
    )
    evidence_max_records: int = Field(
        default=100_000,
        ge=1,
        description="records an evidence pack downloaded over HTTP may hold (the CLI has no cap)",
    )
    ui_secure_cookies: bool = Field(
        default=True, description="UI cookies only over HTTPS (browsers exempt localhost)"
    )

    def qdrant_location(self) -> Path:
        """Where local-mode Qdrant keeps its files."""
        return self.qdrant_path if self.qdrant_path is not None else self.data_dir / "qdrant"

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


# where a value is read from the resolved model version: its tag, its run's param or run's tag
SOURCE_PATTERN = r"^(tag|param|run_tag):[^\s]{1,250}$"
_SOURCE = re.compile(SOURCE_PATTERN)
LineageField = Literal["base_model", "adapter", "adapter_digest", "validation_status"]
# the documented names, looked up in this order unless a route maps the field elsewhere
DEFAULT_FIELD_SOURCES: dict[LineageField, tuple[str, ...]] = {
    "base_model": ("tag:base_model", "param:base_model", "run_tag:base_model"),
    "adapter": ("tag:adapter_name", "param:adapter_name", "run_tag:adapter_name"),
    "adapter_digest": ("tag:adapter_digest", "param:adapter_digest", "run_tag:adapter_digest"),
    "validation_status": ("tag:validation_status", "run_tag:validation_status"),
}


class RegistryLink(BaseModel):
    """A route's link to a registered model in MLflow: every answer is pinned to the version
    the alias (or the fixed version) pointed at when it was served."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="registered model name")
    alias: str | None = Field(default=None, min_length=1, max_length=200)
    version: str | None = Field(default=None, pattern=r"^[1-9][0-9]{0,17}$")
    tracking_uri: str | None = Field(
        default=None, min_length=1, max_length=2000, description="default: Settings"
    )
    fields: dict[LineageField, list[str]] = Field(
        default_factory=dict,
        description="where base model, adapter... are read: tag:X, param:X or run_tag:X",
    )
    cache_ttl_s: float | None = Field(default=None, gt=0)
    max_staleness_s: float | None = Field(default=None, ge=0)
    # what happens once the registry has been unreachable for longer than max_staleness:
    # ``fail`` (503 lineage_unavailable) or ``serve_stale`` (keep the last snapshot, flagged).
    # The policy engine will decide this per answer; this setting is its default.
    beyond_max_staleness: Literal["fail", "serve_stale"] = "fail"

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("fields")
    @classmethod
    def _sources(cls, fields: dict[LineageField, list[str]]) -> dict[LineageField, list[str]]:
        for name, sources in fields.items():
            if not 1 <= len(sources) <= 8:
                raise ValueError(f"{name}: give 1 to 8 sources")
            for source in sources:
                if not _SOURCE.match(source):
                    raise ValueError(f"{name}: {source!r} is not tag:X, param:X or run_tag:X")
        return fields

    @model_validator(mode="after")
    def _alias_or_version(self) -> RegistryLink:
        if (self.alias is None) == (self.version is None):
            raise ValueError("give exactly one of alias or version")
        return self

    def sources(self, name: LineageField) -> tuple[str, ...]:
        """Where a lineage field is read, in order."""
        mapped = self.fields.get(name)
        return tuple(mapped) if mapped else DEFAULT_FIELD_SOURCES[name]


class UpstreamRoute(BaseModel):
    """What every route that calls an OpenAI-compatible upstream has."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    upstream: str = Field(description="base URL ending in /v1")
    upstream_model: str | None = None
    # the upstream model name read from the resolved model version (e.g. ``tag:serving_name``,
    # a vLLM LoRA adapter name): promoting a version in MLflow changes what the upstream is asked
    upstream_model_from: str | None = Field(default=None, pattern=SOURCE_PATTERN)
    api_key_env: str | None = None
    timeouts: Timeouts = Timeouts()
    registry: RegistryLink | None = None

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("upstream must be an http:// or https:// base URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _upstream_model_source(self) -> UpstreamRoute:
        if self.upstream_model_from is not None:
            if self.registry is None:
                raise ValueError("upstream_model_from needs a registry: block")
            if self.upstream_model is not None:
                raise ValueError("give upstream_model or upstream_model_from, not both")
        return self


class OpenAIRoute(UpstreamRoute):
    """A route that proxies to an OpenAI-compatible upstream."""

    kind: Literal["openai"] = "openai"


COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
EXTRACTIVE = "extractive"


class ExtractiveRoute(BaseModel):
    """Built-in, no LLM: answers by quoting the best passages of a collection with [n] markers."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: Literal["extractive"] = "extractive"
    collection: str = Field(pattern=COLLECTION_PATTERN)
    top_k: int = Field(default=4, ge=1, le=50)
    max_quotes: int = Field(default=3, ge=1, le=20)


DEFAULT_PROMPT = (
    "Answer the user's question using only the numbered sources below. After each statement, "
    "cite the source it comes from by its number in square brackets, like [1] or [2][3]. If "
    "the sources do not answer the question, say so.\n\nSources:\n{sources}"
)


class RagRoute(BaseModel):
    """Retrieve from a collection, prompt a generator with numbered sources, parse [n] citations."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    kind: Literal["rag"] = "rag"
    collection: str = Field(pattern=COLLECTION_PATTERN)
    top_k: int = Field(default=5, ge=1, le=50)
    generator: str = Field(
        default=EXTRACTIVE, description="an `openai` route's name, or `extractive`"
    )
    prompt_template: str = Field(default=DEFAULT_PROMPT, min_length=1, max_length=20_000)
    max_quotes: int = Field(default=3, ge=1, le=20)

    @field_validator("prompt_template")
    @classmethod
    def _has_sources(cls, value: str) -> str:
        if "{sources}" not in value:
            raise ValueError("prompt_template must contain the {sources} placeholder")
        return value


class SourceFields(BaseModel):
    """Where each reported source of an external RAG app keeps what Provenant verifies."""

    model_config = ConfigDict(extra="forbid")

    point_id: str = "point_id"
    chunk_id: str = "chunk_id"
    source_uri: str = "source_uri"
    text: str = "text"
    text_sha256: str = "text_sha256"
    title: str = "title"
    page: str = "page"
    score: str = "score"


class RagPassthroughRoute(UpstreamRoute):
    """An external RAG app (OpenAI protocol) that returns its sources in the response; each is
    resolved against the document registry and marked verified or not."""

    kind: Literal["rag-passthrough"] = "rag-passthrough"
    sources_path: str = Field(
        default="sources",
        min_length=1,
        max_length=500,
        description="dotted JSON path to the sources list, e.g. choices.0.message.context.sources",
    )
    source_fields: SourceFields = SourceFields()
    collection: str | None = Field(
        default=None, pattern=COLLECTION_PATTERN, description="verify only against this one"
    )


Route = Annotated[
    OpenAIRoute | RagRoute | ExtractiveRoute | RagPassthroughRoute, Field(discriminator="kind")
]
RETRIEVAL_KINDS = frozenset({"rag", "extractive", "rag-passthrough"})


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

    @model_validator(mode="after")
    def _generators_exist(self) -> RoutesFile:
        names = {route.name: route for route in self.routes}
        for i, route in enumerate(self.routes):
            if isinstance(route, RagRoute) and route.generator != EXTRACTIVE:
                target = names.get(route.generator)
                if target is None or target.kind != "openai":
                    raise ValueError(
                        f"routes.{i}.generator: {route.generator!r} is neither 'extractive' nor "
                        "the name of an `openai` route"
                    )
        return self

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
