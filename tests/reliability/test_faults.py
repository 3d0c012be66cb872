"""Upstream faults and clients that leave.

An upstream that times out, fails with 5xx, sends JSON that is not, cuts or truncates its
event stream, drips slower than the route's total timeout, or answers more than the gateway
accepts: each gives the client a clear OpenAI-format error with a stable code (an HTTP error,
or an SSE error event once a stream has started) and a record with the matching status.

Clients that disconnect mid-stream at random points: each leaves a ``client_disconnected``
record holding the partial answer (what the client read is a prefix of it), and nothing
leaks: the upstream has no request left open, and the gateway's event loop, file descriptors
and threads are back to where they were.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from sqlalchemy import text

from service.app import create_app
from service.config import OpenAIRoute, RoutesFile, Timeouts
from service.db.engine import make_engine, make_sessionmaker
from service.demo_upstream import make_app
from tests.conftest import TenantKeys, make_settings, new_tenant
from tests.reliability.conftest import Tally
from tests.support.servers import GatewayServer, UpstreamServer

pytestmark = pytest.mark.postgres
LIMIT = 256 * 1024  # the gateway's max upstream answer here
QUICK = Timeouts(connect=2, read=0.5, total=5)
DRIP = Timeouts(connect=2, read=1, total=1.5)
IN_FLIGHT = web.AppKey("in_flight", list)
WORDS = " ".join(f"w{i}" for i in range(60))


def counting_upstream() -> web.Application:
    """The demo upstream, counting the requests it is still answering."""
    app = make_app()
    app[IN_FLIGHT] = [0]

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        request.app[IN_FLIGHT][0] += 1
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            request.app[IN_FLIGHT][0] -= 1

    app.middlewares.append(count)
    return app


@pytest.fixture(scope="module")
def faulty() -> Iterator[UpstreamServer]:
    server = UpstreamServer(counting_upstream()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def setup(
    faulty: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayServer, TenantKeys, str]]:
    from tests.support.db import (
        create_postgres_database,
        drop_postgres_database,
        postgres_admin_url,
    )

    admin = postgres_admin_url()
    if admin is None:
        pytest.skip("PROVENANT_TEST_POSTGRES_URL not set (CI sets it and requires PostgreSQL)")
    url = create_postgres_database(admin)
    engine = make_engine(url)
    keys = new_tenant(make_sessionmaker(engine))
    engine.dispose()

    def route(name: str, model: str, timeouts: Timeouts = Timeouts()) -> OpenAIRoute:
        return OpenAIRoute(
            name=name, upstream=faulty.base_url, upstream_model=model, timeouts=timeouts
        )

    routes = RoutesFile(
        routes=[
            route("timeout", "slow-3000", QUICK),
            route("http-500", "fail-500"),
            route("http-503", "fail-503"),
            route("bad-json", "bad-json"),
            route("bad-event", "bad-event"),
            route("cut", "cut-stream"),
            route("truncated", "truncate-sse"),
            route("stall", "stall-stream", QUICK),
            route("slow-drip", "drip-200", DRIP),
            route("oversized", "huge-1024"),
            route("unreachable", "echo-1").model_copy(update={"upstream": "http://127.0.0.1:9/v1"}),
            route("drip", "drip-30"),
        ]
    )
    settings = make_settings(
        url,
        tmp_path_factory.mktemp("faults"),
        max_upstream_response_bytes=LIMIT,
        seal_interval_s=0.5,
    )
    gateway = GatewayServer(create_app(settings, routes)).start()
    yield gateway, keys, url
    gateway.stop()
    drop_postgres_database(admin, url)


# (route, streamed, HTTP status if refused before streaming, error code, record status)
FAULTS = [
    ("timeout", False, 504, "upstream_timeout", "upstream_timeout"),
    ("timeout", True, 504, "upstream_timeout", "upstream_timeout"),
    ("http-500", False, 502, "upstream_error", "upstream_error"),
    ("http-503", True, 502, "upstream_error", "upstream_error"),
    ("bad-json", False, 502, "upstream_error", "upstream_error"),
    ("bad-json", True, 502, "upstream_error", "upstream_error"),  # JSON, not a stream
    ("bad-event", True, None, "upstream_error", "upstream_error"),
    ("cut", True, None, "upstream_error", "upstream_error"),
    ("truncated", True, None, "upstream_error", "upstream_error"),
    ("stall", True, None, "upstream_timeout", "upstream_timeout"),
    ("slow-drip", True, None, "upstream_timeout", "upstream_timeout"),
    ("oversized", False, 502, "upstream_response_too_large", "upstream_error"),
    ("oversized", True, None, "upstream_response_too_large", "upstream_error"),
    ("unreachable", False, 502, "upstream_error", "upstream_error"),
]


def record_of(url: str, audit_id: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT status, error_code, answer FROM audit_records WHERE id = :id"),
                {"id": uuid.UUID(audit_id)},
            ).first()
    finally:
        engine.dispose()
    assert row is not None, f"no record for {audit_id}"
    return dict(row._mapping)


def test_every_upstream_fault_is_a_clear_error_and_a_record(
    setup: tuple[GatewayServer, TenantKeys, str], tally: Tally
) -> None:
    gateway, keys, url = setup
    client = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=keys.app, max_retries=0, timeout=20
    )
    seen: list[str] = []
    for route, stream, status, code, recorded in FAULTS:
        tally.sent += 1
        received = ""
        with pytest.raises(openai.APIError) as info:
            if stream:
                for chunk in client.chat.completions.create(
                    model=route, messages=[{"role": "user", "content": WORDS}], stream=True
                ):
                    received += "".join(c.delta.content or "" for c in chunk.choices)
            else:
                client.chat.completions.create(
                    model=route, messages=[{"role": "user", "content": WORDS}]
                )
        exc = info.value
        body = exc.body if isinstance(exc.body, dict) else {}
        if status is None:  # the stream had started: an SSE error event, HTTP 200
            assert not isinstance(exc, openai.APIStatusError), (route, exc)
            audit_id = body["provenance"]["audit_id"]
        else:
            assert isinstance(exc, openai.APIStatusError) and exc.status_code == status, (
                route,
                stream,
                exc,
            )
            audit_id = exc.response.headers["x-provenant-audit-id"]
        assert body.get("code") == code, (route, stream, body)
        assert body.get("message") and "Traceback" not in body["message"]
        tally.acknowledged += 1  # an error that names its audit id
        rec = record_of(url, audit_id)
        tally.records += 1
        ok = rec["status"] == recorded and rec["error_code"] == code
        ok = ok and (rec["answer"] or "") == received  # the partial answer, as relayed
        tally.mismatches += 0 if ok else 1
        seen.append(f"{route}{'/stream' if stream else ''}")
        assert ok, (route, stream, rec, received[:80])
    client.close()
    tally.notes["kinds"] = len(seen)
    assert tally.mismatches == 0


def _loop_of(gateway: GatewayServer) -> asyncio.AbstractEventLoop:
    return gateway.server.servers[0].get_loop()  # type: ignore[no-any-return]


def _tasks(gateway: GatewayServer) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), _loop_of(gateway)).result(5)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _leave_mid_stream(port: int, key: str, events: int) -> tuple[str, str]:
    """Ask for a stream over a raw socket, read ``events`` data events, then close (RST)."""
    body = orjson.dumps(
        {
            "model": "drip",
            "stream": True,
            "messages": [{"role": "user", "content": f"{uuid.uuid4().hex[:6]} {WORDS}"}],
        }
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n".encode()
            + b"Content-Type: application/json\r\n\r\n"
            + body
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        audit_id = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-provenant-audit-id")
        )
        received = ""
        stream = rest
        while stream.count(b"data: ") < events:
            more = sock.recv(65536)
            if not more:
                break
            stream += more
        for part in stream.split(b"data: ")[1 : events + 1]:
            payload = part.split(b"\n\n")[0].split(b"\r\n")[-1]
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue  # a chunk-size line cut the event: the text is still a prefix
            for choice in chunk.get("choices") or ():
                received += (choice.get("delta") or {}).get("content") or ""
        return audit_id, received
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()


def test_clients_leaving_mid_stream_leave_partial_records_and_no_leaks(
    setup: tuple[GatewayServer, TenantKeys, str], faulty: UpstreamServer, tally: Tally
) -> None:
    gateway, keys, url = setup
    # warm up: one full stream (pools, lazy imports) before the baselines are taken
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "drip", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {keys.app}"},
        timeout=10,
    ) as resp:
        resp.read()
    time.sleep(0.3)
    tasks_before, fds_before, threads_before = _tasks(gateway), _fds(), threading.active_count()

    rng = random.Random(20261121)
    points = [rng.randint(0, 40) for _ in range(24)]
    results: list[tuple[str, str]] = []
    lock = threading.Lock()

    def leave(events: int) -> None:
        got = _leave_mid_stream(gateway.port, keys.app, events)
        with lock:
            results.append(got)

    for batch in range(0, len(points), 8):
        workers = [threading.Thread(target=leave, args=(p,)) for p in points[batch : batch + 8]]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    tally.sent = len(points)
    tally.acknowledged = len(results)  # streams started with their audit id

    engine = make_engine(url)
    try:
        deadline = time.monotonic() + 15
        while True:
            with engine.connect() as conn:
                rows = {
                    str(rid): (status, answer)
                    for rid, status, answer in conn.execute(
                        text("SELECT id, status, answer FROM audit_records WHERE id = ANY(:ids)"),
                        {"ids": [uuid.UUID(a) for a, _ in results]},
                    )
                }
            if len(rows) == len(results) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        engine.dispose()
    full = f"Echo: x {WORDS}"
    tally.records = len(rows)
    for audit_id, received in results:
        status, answer = rows.get(audit_id, (None, None))
        answer = answer or ""
        ok = (
            status == "client_disconnected"
            and answer.startswith(received)  # the client read a prefix of what was recorded
            and len(answer.split()) < len(full.split())  # and it is partial
        )
        tally.mismatches += 0 if ok else 1
    assert len(rows) == len(results) == len(points)

    # nothing left behind: upstream requests, event-loop tasks, descriptors, threads
    deadline = time.monotonic() + 10
    while True:
        leaks = {
            "upstream_in_flight": faulty.app[IN_FLIGHT][0],
            "tasks": _tasks(gateway) - tasks_before,
            "fds": _fds() - fds_before,
            "threads": threading.active_count() - threads_before,
        }
        if all(v <= 0 for v in leaks.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    tally.notes.update({f"leaked_{k}": max(v, 0) for k, v in leaks.items()})
    assert tally.mismatches == 0
    assert all(v <= 0 for v in leaks.values()), leaks
