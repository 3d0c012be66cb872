"""Reading a registered model version from MLflow: the version, its run, the run's datasets.

Blocking I/O: the resolver calls this in a worker thread (``asyncio.to_thread``) and the CLI calls
it directly; never on the event loop. MLflow is imported on first use, so a gateway without
registry-linked routes never pays for it.

What is read, all through ``MlflowClient``: the model version by alias
(``get_model_version_by_alias``) or by number (``get_model_version``): name, version, aliases,
source, run id, status, tags, description; its run (``get_run``): params, tags, start and end
time, user; and the run's inputs (``run.inputs.dataset_inputs``): each dataset's name, digest,
source type, source and context. Base model, adapter name and digest, and validation status come
from the documented tags / params (``config.DEFAULT_FIELD_SOURCES``) or the route's mapping.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from service.config import DEFAULT_FIELD_SOURCES, RegistryLink
from service.errors import RegistryError

REGISTRY = "mlflow"
# bounds on what one snapshot copies from the registry (MLflow's own limits are larger)
MAX_ENTRIES = 256
MAX_TEXT = 2000
MAX_DATASETS = 100
_SECRET_QUERY = re.compile(r"(token|key|secret|passw|sig|credential|auth)", re.I)
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@]+@", re.I)


def configure_client(timeout_s: int, max_retries: int) -> None:
    """Make MLflow's HTTP client fail fast: it reads its timeout and retries only from the
    environment (default 120 s and 7 retries with backoff, minutes in all), while the gateway
    would rather serve its last snapshot and try again. Also turns MLflow's usage telemetry off."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def redact_uri(uri: str) -> str:
    """A URI without credentials: no user info, no secret-looking query parameters (a URI
    without either is returned as it is: ``sqlite:///./data/mlflow.db`` keeps its slashes)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return scrub_text(uri)
    params = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in params if not _SECRET_QUERY.search(k)]
    if "@" not in parts.netloc and len(kept) == len(params):
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode(kept) if len(kept) != len(params) else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub_text(text: str) -> str:
    """Remove ``user:password@`` from every URL inside a message."""
    return _USERINFO.sub(r"\1", text)


@dataclass(frozen=True)
class Resolution:
    """What the registry said, as the snapshot document, and what to ask the upstream for."""

    content: dict[str, Any]
    upstream_model: str | None


class MlflowRegistry:
    """One MLflow tracking server (or SQL store), read through ``MlflowClient``."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.display_uri = redact_uri(tracking_uri)
        self._client: Any = None
        self._lock = threading.Lock()

    def _mlflow(self) -> Any:
        with self._lock:
            if self._client is None:
                from mlflow import MlflowClient

                self._client = MlflowClient(
                    tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
                )
            return self._client

    def resolve(self, link: RegistryLink, upstream_model_from: str | None = None) -> Resolution:
        """Resolve a route's link now; raise RegistryError (message without credentials)."""
        try:
            client = self._mlflow()
            if link.alias is not None:
                mv = client.get_model_version_by_alias(link.model, link.alias)
            else:
                mv = client.get_model_version(link.model, link.version)
            run = self._run(client, mv.run_id) if mv.run_id else None
        except RegistryError:
            raise
        except Exception as exc:  # MLflow raises MlflowException, requests errors, OSError...
            raise RegistryError(self._describe(link, exc)) from exc
        content = self._content(link, mv, run)
        upstream = None
        if upstream_model_from is not None:
            upstream = _lookup(upstream_model_from, mv, run)
            if not upstream:
                raise RegistryError(
                    f"{link.model} version {mv.version} has no {upstream_model_from}: the "
                    "upstream model name cannot be read from the registry"
                )
            upstream = upstream[:200]
        return Resolution(content, upstream)

    def _run(self, client: Any, run_id: str) -> Any:
        """The version's run; a run deleted for good leaves ``None`` (recorded as such)."""
        from mlflow.exceptions import MlflowException

        try:
            return client.get_run(run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def _describe(self, link: RegistryLink, exc: Exception) -> str:
        code = getattr(exc, "error_code", None)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        message = scrub_text(message.replace(self.tracking_uri, self.display_uri))
        target = f"{link.model}@{link.alias}" if link.alias else f"{link.model} v{link.version}"
        prefix = f"{code}: " if code else f"{type(exc).__name__}: "
        return f"registry {self.display_uri} could not resolve {target}: {prefix}{message[:300]}"

    def _content(self, link: RegistryLink, mv: Any, run: Any) -> dict[str, Any]:
        truncated: list[str] = []
        content: dict[str, Any] = {
            "registry": REGISTRY,
            "tracking_uri": self.display_uri,
            "name": mv.name,
            "version": str(mv.version),
            "alias": link.alias,
            "aliases": sorted(str(a) for a in (mv.aliases or [])),
            "status": mv.status,
            "source": _text(redact_uri(mv.source), "source", truncated) if mv.source else None,
            "run_id": mv.run_id or None,
            "description": _text(mv.description, "description", truncated),
            "tags": _bounded(mv.tags, "tags", truncated),
            "created_at": _ms(mv.creation_timestamp),
            "run": _run_content(run, truncated) if run is not None else None,
            "datasets": _datasets(run, truncated),
        }
        for name in DEFAULT_FIELD_SOURCES:
            value = next(
                (v for s in link.sources(name) if (v := _lookup(s, mv, run)) is not None), None
            )
            content[name] = _text(value, name, truncated)
        content["truncated"] = truncated
        return content


def _lookup(source: str, mv: Any, run: Any) -> str | None:
    """A value named ``tag:X`` (model version tag), ``param:X`` or ``run_tag:X``."""
    kind, _, key = source.partition(":")
    if kind == "tag":
        value = (mv.tags or {}).get(key)
    elif run is None:
        return None
    elif kind == "param":
        value = run.data.params.get(key)
    else:
        value = run.data.tags.get(key)
    return None if value is None else str(value)


def _run_content(run: Any, truncated: list[str]) -> dict[str, Any]:
    info = run.info
    return {
        "run_id": info.run_id,
        "experiment_id": info.experiment_id,
        "run_name": info.run_name,
        "status": info.status,
        "user_id": info.user_id or None,
        "start_time": _ms(info.start_time),
        "end_time": _ms(info.end_time),
        "params": _bounded(run.data.params, "run.params", truncated),
        "tags": _bounded(run.data.tags, "run.tags", truncated),
    }


def _datasets(run: Any, truncated: list[str]) -> list[dict[str, Any]]:
    inputs = getattr(run, "inputs", None) if run is not None else None
    out = []
    for item in getattr(inputs, "dataset_inputs", None) or []:
        ds = item.dataset
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), None)
        out.append(
            {
                "name": _text(ds.name, "datasets.name", truncated),
                "digest": _text(ds.digest, "datasets.digest", truncated),
                "source_type": _text(ds.source_type, "datasets.source_type", truncated),
                "source": _source(ds.source, truncated),
                "context": _text(context, "datasets.context", truncated),
            }
        )
    out.sort(key=lambda d: (str(d["name"]), str(d["digest"]), str(d["context"])))
    if len(out) > MAX_DATASETS:
        truncated.append("datasets")
        out = out[:MAX_DATASETS]
    return out


def _source(raw: str | None, truncated: list[str]) -> str | None:
    """A dataset's source as one string: its URI when MLflow stored one, else the JSON."""
    if raw is None:
        return None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = raw
    if isinstance(parsed, dict):
        for key in ("uri", "url", "path", "location", "table_name"):
            if isinstance(parsed.get(key), str):
                return _text(redact_uri(parsed[key]), "datasets.source", truncated)
    return _text(scrub_text(raw), "datasets.source", truncated)


def _bounded(values: Any, where: str, truncated: list[str]) -> dict[str, str]:
    items = sorted((str(k), str(v)) for k, v in dict(values or {}).items())
    if len(items) > MAX_ENTRIES:
        truncated.append(where)
        items = items[:MAX_ENTRIES]
    return {k[:MAX_TEXT]: _text(v, f"{where}.{k}", truncated) or "" for k, v in items}


def _text(value: Any, where: str, truncated: list[str]) -> str | None:
    """A string as PostgreSQL JSONB can hold it (no NUL), at most MAX_TEXT characters."""
    if value is None:
        return None
    text = str(value).replace("\x00", "")
    if len(text) > MAX_TEXT:
        truncated.append(where[:200])
        text = text[:MAX_TEXT]
    return text


def _ms(value: Any) -> str | None:
    """An MLflow timestamp (ms since the epoch) as ISO 8601 UTC."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="milliseconds")
