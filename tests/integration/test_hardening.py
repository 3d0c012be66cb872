"""Bounded inputs and safe defaults, as a client meets them: deep JSON and oversized headers are
refused with clear codes, per-key rate limits answer 429 in the OpenAI shape (the SDK's
RateLimitError), CORS is off, and framework responses carry the security headers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from service.app import create_app
from service.config import OpenAIRoute, RoutesFile
from tests.conftest import TenantKeys, make_settings
from tests.support.servers import GatewayServer, UpstreamServer

CHAT = "/v1/chat/completions"


def nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.fixture
def limited(database_url: str, upstream: UpstreamServer, tmp_path: Path) -> Iterator[GatewayServer]:
    settings = make_settings(database_url, tmp_path, rate_limit_rps=1, rate_limit_burst=3)
    routes = RoutesFile(
        routes=[OpenAIRoute(name="echo", upstream=upstream.base_url, upstream_model="echo-1")]
    )
    server = GatewayServer(create_app(settings, routes)).start()
    yield server
    server.stop()


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "framework"])
def test_deep_json_is_refused(
    gateway: GatewayServer, tenant: TenantKeys, fast_path: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.app, "fast_path", fast_path)
    auth = {"Authorization": f"Bearer {tenant.app}"}
    messages = [{"role": "user", "content": "hi"}]
    with httpx.Client(base_url=gateway.url, headers=auth) as client:
        ok = client.post(CHAT, json={"model": "echo", "messages": messages, "metadata": nested(30)})
        assert ok.status_code == 200, ok.text
        deep = client.post(CHAT, json={"model": "echo", "messages": messages, "x": nested(70)})
        assert deep.status_code == 400
        assert deep.json()["error"]["code"] == "invalid_request"
        assert "deeper than 64" in deep.json()["error"]["message"]
        deeper = client.post(
            CHAT,
            content=b'{"model": "echo", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            headers={"Content-Type": "application/json"},
        )
        assert deeper.status_code == 400 and "Traceback" not in deeper.text


def test_oversized_headers_get_431(gateway: GatewayServer, tenant: TenantKeys) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        big = {"Authorization": f"Bearer {tenant.app}", "X-Padding": "a" * 40_000}
        for method, path in (("POST", CHAT), ("GET", "/v1/models")):
            resp = client.request(method, path, headers=big, json={})
            assert resp.status_code == 431
            assert resp.json()["error"]["code"] == "headers_too_large"


def test_rate_limit_is_per_key_and_openai_shaped(
    limited: GatewayServer, tenant: TenantKeys, other_tenant: TenantKeys
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=f"{limited.url}/v1", api_key=tenant.app, max_retries=0) as sdk:
        for _ in range(3):  # the burst
            sdk.chat.completions.create(model="echo", messages=messages)
        with pytest.raises(openai.RateLimitError) as exc:
            sdk.chat.completions.create(model="echo", messages=messages)
    assert exc.value.code == "rate_limit_exceeded"
    assert int(exc.value.response.headers["Retry-After"]) >= 1
    # another key has its own bucket
    with openai.OpenAI(base_url=f"{limited.url}/v1", api_key=other_tenant.app) as sdk:
        assert sdk.chat.completions.create(model="echo", messages=messages).choices


def test_cors_is_off_and_security_headers_are_set(
    gateway: GatewayServer, tenant: TenantKeys
) -> None:
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with httpx.Client(base_url=gateway.url) as client:
        preflight = client.options(CHAT, headers=origin)
        assert "access-control-allow-origin" not in preflight.headers
        listing = client.get(
            "/v1/audit/records",
            headers={**origin, "Authorization": f"Bearer {tenant.auditor}"},
        )
        assert listing.status_code == 200
        assert "access-control-allow-origin" not in listing.headers
        assert listing.headers["x-content-type-options"] == "nosniff"
        assert listing.headers["x-frame-options"] == "DENY"
        assert listing.headers["cache-control"] == "no-store"
        ui = client.get("/ui/anything")
        assert "frame-ancestors 'none'" in ui.headers["content-security-policy"]
