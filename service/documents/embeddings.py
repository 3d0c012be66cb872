"""Optional dense embeddings from any OpenAI-compatible ``POST /v1/embeddings`` endpoint.

Synchronous (httpx): ingestion and retrieval run in worker threads, beside the blocking Qdrant
and SQL calls of the same step. The API key comes from the settings (environment) and is sent
per request, never stored or logged.
"""

from __future__ import annotations

from typing import Any

import httpx

from service.config import Settings
from service.errors import EmbeddingsUnavailable

_BATCH = 64


class Embedder:
    """Embeds texts with one model; ``dimensions`` is learnt from the first answer."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0
    ) -> None:
        headers = {"User-Agent": "provenant"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.model = model
        self._url = f"{base_url.rstrip('/')}/embeddings"
        self._client = httpx.Client(headers=headers, timeout=timeout_s, trust_env=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder | None:
        """The configured embedder, or None when only sparse vectors are used."""
        if not settings.embeddings_url:
            return None
        key = settings.embeddings_api_key
        return cls(
            settings.embeddings_url,
            settings.embeddings_model,
            key.get_secret_value() if key is not None else None,
        )

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order; raise EmbeddingsUnavailable on any failure."""
        out: list[list[float]] = []
        for i in range(0, len(texts), _BATCH):
            out.extend(self._batch(texts[i : i + _BATCH]))
        return out

    def _batch(self, texts: list[str]) -> list[list[float]]:
        try:
            resp = self._client.post(self._url, json={"model": self.model, "input": texts})
        except httpx.HTTPError as exc:
            raise EmbeddingsUnavailable(
                f"embeddings endpoint unreachable: {type(exc).__name__}"
            ) from exc
        if resp.status_code != 200:
            raise EmbeddingsUnavailable(f"embeddings endpoint answered HTTP {resp.status_code}")
        try:
            data: Any = resp.json()["data"]
            vectors = [
                [float(x) for x in item["embedding"]]
                for item in sorted(data, key=lambda d: int(d.get("index", 0)))
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingsUnavailable("embeddings endpoint returned an unexpected body") from exc
        if len(vectors) != len(texts) or len({len(v) for v in vectors}) > 1:
            raise EmbeddingsUnavailable("embeddings endpoint returned the wrong number of vectors")
        return vectors

    def close(self) -> None:
        """Release the HTTP connections."""
        self._client.close()
