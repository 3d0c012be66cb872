"""Settings (environment, ``PROVENANT_`` prefix) and the routes file model.

Nothing here is built at import time: ``Settings()`` and ``load_routes()`` are called by the
app factory and the CLI, so tests pass their own values in.
"""

from __future__ import annotations

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
    # integrity log
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 PEM key; default <data_dir>/signing-key.pem, made once"
    )
    log_origin: str = Field(default="provenant.local/audit-log", min_length=1, max_length=200)
    seal_interval_s: float = Field(default=2.0, gt=0)
    max_merge_delay_s: int = Field(default=60, ge=1)
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


class UpstreamRoute(BaseModel):
    """What every route that calls an OpenAI-compatible upstream has."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
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
