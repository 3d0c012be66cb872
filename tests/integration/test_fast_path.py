"""``POST /v1/chat/completions`` is served by a pure-ASGI path in front of FastAPI.

It must answer exactly as the documented FastAPI route does: every case below runs against a
gateway with the fast path and one without it (the framework route alone).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from service.app import create_app
from tests.conftest import TenantKeys, make_settings, routes_for
from tests.integration.test_errors import assert_openai_error
from tests.support.servers import GatewayServer, UpstreamServer

LIMIT = 2048


@pytest.fixture(scope="module", params=["fast-path", "framework-only"])
def small_gateway(
    request: pytest.FixtureRequest,
    database_url: str,
    upstream: UpstreamServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayServer]:
    settings = make_settings(database_url, tmp_path_factory.mktemp("data"), max_body_bytes=LIMIT)
    app = create_app(settings, routes_for(upstream.base_url))
    if request.param == "framework-only":
        app.fast_path = False
    server = GatewayServer(app).start()
    yield server
    server.stop()


def chat(
    gateway: GatewayServer, key: str | None, content: bytes | Iterator[bytes], **headers: str
) -> httpx.Response:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )


GOOD = b'{"model": "echo", "messages": [{"role": "user", "content": "hi there"}]}'


def test_answers_carry_the_audit_header_and_provenance(
    small_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    resp = chat(small_gateway, tenant.app, GOOD)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["choices"][0]["message"]["content"] == "Echo: hi there"
    assert answer["provenance"]["audit_id"] == resp.headers["x-provenant-audit-id"]
    assert resp.headers["content-type"] == "application/json"


def test_a_chunked_body_is_reassembled(small_gateway: GatewayServer, tenant: TenantKeys) -> None:
    parts = iter([GOOD[:10], GOOD[10:40], GOOD[40:]])
    resp = chat(small_gateway, tenant.app, parts)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "Echo: hi there"


def test_refusals_are_openai_shaped(small_gateway: GatewayServer, tenant: TenantKeys) -> None:
    assert_openai_error(chat(small_gateway, None, GOOD), 401, "invalid_api_key")
    assert_openai_error(chat(small_gateway, "pvn_x", GOOD), 401, "invalid_api_key")
    error = assert_openai_error(chat(small_gateway, tenant.admin, GOOD), 403, "forbidden")
    assert "admin" in error["message"]
    assert_openai_error(chat(small_gateway, tenant.app, b"{nope"), 400, "invalid_request")
    resp = chat(small_gateway, tenant.app, b'{"model": "nope", "messages": [{"role": "user"}]}')
    assert_openai_error(resp, 404, "model_not_found")


def test_the_body_limit_holds_with_and_without_a_content_length(
    small_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    big = b'{"model": "echo", "messages": [{"role": "user", "content": "' + b"x" * LIMIT + b'"}]}'
    assert_openai_error(chat(small_gateway, tenant.app, big), 413, "payload_too_large")
    chunked = iter([big[:1000], big[1000:2000], big[2000:]])
    assert_openai_error(chat(small_gateway, tenant.app, chunked), 413, "payload_too_large")


def test_other_methods_on_the_path_stay_with_the_framework(
    small_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    resp = httpx.get(
        f"{small_gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {tenant.app}"},
    )
    assert resp.status_code == 405
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("raised", "status", "code"),
    [
        (RuntimeError("secret internals"), 500, "internal_error"),
        (OperationalError("SELECT", {}, Exception("gone")), 503, "lineage_store_unavailable"),
    ],
)
def test_unexpected_errors_render_like_the_app_handlers(
    small_gateway: GatewayServer,
    tenant: TenantKeys,
    monkeypatch: pytest.MonkeyPatch,
    raised: Exception,
    status: int,
    code: str,
) -> None:
    async def broken(*_: object) -> None:
        raise raised

    monkeypatch.setattr(small_gateway.app.state.pipeline, "chat", broken)
    error = assert_openai_error(chat(small_gateway, tenant.app, GOOD), status, code)
    assert "secret" not in error["message"]


def test_the_route_stays_documented_in_openapi(small_gateway: GatewayServer) -> None:
    schema = httpx.get(f"{small_gateway.url}/openapi.json").json()
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "messages"]
    assert operation["description"].startswith("Create a chat completion")


def test_streams_pass_through_the_fast_path(
    small_gateway: GatewayServer, tenant: TenantKeys
) -> None:
    body = b'{"model": "echo", "stream": true, "messages": [{"role": "user", "content": "a b"}]}'
    with httpx.stream(
        "POST",
        f"{small_gateway.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {tenant.app}", "Content-Type": "application/json"},
        timeout=10,
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        lines = [line for line in resp.iter_lines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    assert resp.headers["x-provenant-audit-id"] in lines[-2]
