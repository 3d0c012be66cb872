"""Every way a request can fail: the status a client sees, and the record left behind."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from service.tenancy.service import create_key, revoke_key
from tests.conftest import TenantKeys
from tests.support.servers import GatewayServer

MSG = [{"role": "user", "content": "one two three four five six"}]


def post(gateway: GatewayServer, key: str | None, body: object, **kw: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        return httpx.post(
            f"{gateway.url}/v1/chat/completions",
            content=body,
            headers={**headers, "Content-Type": "application/json"},
            timeout=10,
        )
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def record(gateway: GatewayServer, key: str, audit_id: str, wait_s: float = 0.0) -> dict:
    deadline = time.monotonic() + wait_s
    while True:
        resp = httpx.get(
            f"{gateway.url}/v1/audit/records/{audit_id}", headers={"Authorization": f"Bearer {key}"}
        )
        if resp.status_code == 200 or time.monotonic() >= deadline:
            assert resp.status_code == 200, resp.text
            return resp.json()
        time.sleep(0.05)


def assert_openai_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["message"] and "Traceback" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def sdk(gateway: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=10)


def test_missing_malformed_and_unknown_keys_get_401(gateway: GatewayServer) -> None:
    body = {"model": "echo", "messages": MSG}
    assert_openai_error(post(gateway, None, body), 401, "invalid_api_key")
    assert_openai_error(post(gateway, "not-a-key", body), 401, "invalid_api_key")
    assert_openai_error(post(gateway, "pvn_000000000000_forged", body), 401, "invalid_api_key")
    with (
        sdk(gateway, "pvn_000000000000_forged") as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.chat.completions.create(model="echo", messages=MSG)


def test_right_prefix_wrong_secret_is_refused(gateway: GatewayServer, tenant: TenantKeys) -> None:
    forged = tenant.app[:-4] + ("AAAA" if not tenant.app.endswith("AAAA") else "BBBB")
    assert_openai_error(
        post(gateway, forged, {"model": "echo", "messages": MSG}), 401, "invalid_api_key"
    )


def test_revoked_key_is_refused(gateway: GatewayServer, sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as session:
        issued = create_key(session, tenant="revoking", role="app")
        revoke_key(session, prefix=issued.prefix)
        session.commit()
    assert_openai_error(
        post(gateway, issued.key, {"model": "echo", "messages": MSG}), 401, "invalid_api_key"
    )


def test_wrong_role_gets_403(gateway: GatewayServer, tenant: TenantKeys) -> None:
    error = assert_openai_error(
        post(gateway, tenant.auditor, {"model": "echo", "messages": MSG}), 403, "forbidden"
    )
    assert "auditor" in error["message"]
    resp = httpx.get(
        f"{gateway.url}/v1/audit/records", headers={"Authorization": f"Bearer {tenant.app}"}
    )
    assert_openai_error(resp, 403, "forbidden")


def test_unknown_model_gets_404_without_a_record(
    gateway: GatewayServer, tenant: TenantKeys
) -> None:
    with sdk(gateway, tenant.app) as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-route", messages=MSG)
    assert info.value.code == "model_not_found"
    listing = httpx.get(
        f"{gateway.url}/v1/audit/records", headers={"Authorization": f"Bearer {tenant.auditor}"}
    ).json()
    assert listing["data"] == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        ({"messages": MSG}, "'model'"),
        ({"model": "echo"}, "'messages'"),
        ({"model": "echo", "messages": []}, "'messages'"),
        ({"model": "echo", "messages": ["hi"]}, "messages[0]"),
        ({"model": "echo", "messages": MSG, "stream": "yes"}, "'stream'"),
        ({"model": "echo", "messages": MSG, "n": 0}, "'n'"),
    ],
)
def test_malformed_bodies_get_400_naming_the_problem(
    gateway: GatewayServer, tenant: TenantKeys, body: object, fragment: str
) -> None:
    error = assert_openai_error(post(gateway, tenant.app, body), 400, "invalid_request")
    assert fragment in error["message"]


def test_oversized_body_gets_413(gateway: GatewayServer, tenant: TenantKeys) -> None:
    huge = {"model": "echo", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    assert_openai_error(post(gateway, tenant.app, huge), 413, "payload_too_large")


@pytest.mark.parametrize(
    ("route", "status", "code", "record_status"),
    [
        ("fail", 502, "upstream_error", "upstream_error"),
        ("bad-json", 502, "upstream_error", "upstream_error"),
        ("slow", 504, "upstream_timeout", "upstream_timeout"),
        ("reject", 400, "upstream_rejected", "upstream_rejected"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_map_to_gateway_errors_and_are_recorded(
    gateway: GatewayServer,
    tenant: TenantKeys,
    route: str,
    status: int,
    code: str,
    record_status: str,
    stream: bool,
) -> None:
    resp = post(gateway, tenant.app, {"model": route, "messages": MSG, "stream": stream})
    assert_openai_error(resp, status, code)
    rec = record(gateway, tenant.auditor, resp.headers["x-provenant-audit-id"])
    assert rec["status"] == record_status
    assert rec["http_status"] == status
    assert rec["error_code"] == code
    assert rec["answer"] == ""


def test_upstream_unreachable_gets_502(
    gateway: GatewayServer, tenant: TenantKeys, upstream
) -> None:  # type: ignore[no-untyped-def]
    # a route whose upstream port has nothing listening
    pipeline = gateway.app.state.pipeline
    dead = pipeline.routes["echo"].model_copy(
        update={"name": "dead", "upstream": "http://127.0.0.1:9/v1"}
    )
    pipeline.routes["dead"] = dead
    try:
        resp = post(gateway, tenant.app, {"model": "dead", "messages": MSG})
    finally:
        del pipeline.routes["dead"]
    error = assert_openai_error(resp, 502, "upstream_error")
    assert "unreachable" in error["message"]
    assert record(gateway, tenant.auditor, resp.headers["x-provenant-audit-id"])["status"] == (
        "upstream_error"
    )


@pytest.mark.parametrize(
    ("route", "status"), [("cut", "upstream_error"), ("stall", "upstream_timeout")]
)
def test_stream_failing_midway_ends_with_an_error_event_and_a_partial_record(
    gateway: GatewayServer, tenant: TenantKeys, route: str, status: str
) -> None:
    received: list[str] = []
    with sdk(gateway, tenant.app) as client, pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model=route, messages=MSG, stream=True):
            received += [c.delta.content or "" for c in chunk.choices]
    partial = "".join(received)
    assert partial.startswith("Echo:")
    assert partial != "Echo: one two three four five six"
    assert isinstance(info.value.body, dict)
    audit_id = info.value.body["provenance"]["audit_id"]
    rec = record(gateway, tenant.auditor, audit_id)
    assert rec["status"] == status
    assert rec["answer"] == partial


def test_client_disconnect_mid_stream_is_recorded_with_the_partial_answer(
    gateway: GatewayServer, tenant: TenantKeys
) -> None:
    body = {
        "model": "drip",
        "stream": True,
        "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(40))}],
    }
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {tenant.app}"},
        timeout=10,
    ) as resp:
        assert resp.status_code == 200
        audit_id = resp.headers["x-provenant-audit-id"]
        events = 0
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events += 1
            if events == 4:
                break  # leaving the block closes the connection mid-stream
    rec = record(gateway, tenant.auditor, audit_id, wait_s=5)
    assert rec["status"] == "client_disconnected"
    assert rec["answer"].startswith("Echo: w0")
    assert len(rec["answer"].split()) < 41


def test_client_leaving_while_sending_its_body_is_not_an_internal_error(
    gateway: GatewayServer, tenant: TenantKeys, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {tenant.app}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            + b'{"model": "echo", "mess'
        )
        time.sleep(0.3)  # the gateway is now waiting for the rest of the body
    time.sleep(0.3)
    gateway_errors = [
        r
        for r in caplog.records
        if r.levelname == "ERROR" and r.name.split(".")[0] in ("provenant", "uvicorn")
    ]
    assert not gateway_errors
    resp = post(gateway, tenant.app, {"model": "echo", "messages": MSG})
    assert resp.status_code == 200
