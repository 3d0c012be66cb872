"""Graceful shutdown of a real ``provenant serve``: on SIGTERM ``/readyz`` turns 503 at once
while requests are still served for the drain delay; then the server stops accepting, lets
the slow answer and the stream in flight finish, flushes the audit writer and exits. Every
answer given has its committed record."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import text

from service.db.engine import make_engine
from tests.reliability.conftest import Tally, sha256
from tests.support.serve import ServeProcess, free_port, new_key, serve_env
from tests.support.servers import UpstreamServer

pytestmark = pytest.mark.postgres
DELAY_S = 1.5


def test_sigterm_drains_in_flight_answers_and_readiness_goes_false_first(
    pg_url: str, upstream: UpstreamServer, tmp_path: Path, tally: Tally
) -> None:
    routes = (
        "routes:\n"
        f"  - {{name: slow, upstream: {upstream.base_url}, upstream_model: slow-2500}}\n"
        f"  - {{name: drip, upstream: {upstream.base_url}, upstream_model: drip-40}}\n"
        f"  - {{name: echo, upstream: {upstream.base_url}, upstream_model: echo-1}}\n"
    )
    env = serve_env(pg_url, tmp_path, routes, shutdown_delay_s=str(DELAY_S))
    key = new_key(pg_url, "drain", "app")
    server = ServeProcess(env, free_port(), tmp_path / "serve.log").start()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)
    got: dict[str, tuple[str, str]] = {}  # route -> (audit id, sha256 of the text received)
    errors: list[BaseException] = []

    def ask(route: str) -> None:
        prompt = f"{route} {uuid.uuid4().hex[:6]} " + " ".join(f"w{i}" for i in range(50))
        try:
            if route == "drip":
                chunks = list(
                    client.chat.completions.create(
                        model=route, messages=[{"role": "user", "content": prompt}], stream=True
                    )
                )
                text_ = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                extra = chunks[-1].model_extra or {}
            else:
                answer = client.chat.completions.create(
                    model=route, messages=[{"role": "user", "content": prompt}]
                )
                text_, extra = answer.choices[0].message.content or "", answer.model_extra or {}
            got[route] = (extra["provenance"]["audit_id"], sha256(text_))
        except BaseException as exc:
            errors.append(exc)

    before = len(upstream.requests)
    in_flight = [threading.Thread(target=ask, args=(r,)) for r in ("slow", "drip")]
    for t in in_flight:
        t.start()
    deadline = time.monotonic() + 30
    while len(upstream.requests) - before < 2:  # both reached the upstream
        assert time.monotonic() < deadline
        time.sleep(0.02)
    tally.sent = 2
    assert server.proc is not None
    server.proc.send_signal(15)  # SIGTERM
    signalled = time.monotonic()

    ready = httpx.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
    assert time.monotonic() - signalled < DELAY_S  # not ready first, while still serving
    ask("echo")  # a request the load balancer still sent is served
    tally.sent += 1
    for t in in_flight:
        t.join(30)
    status = server.proc.wait(30)
    drained_s = time.monotonic() - signalled
    client.close()
    assert not errors, errors
    tally.acknowledged = len(got)

    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = {
                str(rid): (st, sha)
                for rid, st, sha in conn.execute(
                    text("SELECT id, status, answer_sha256 FROM audit_records")
                )
            }
    finally:
        engine.dispose()
    tally.records = sum(1 for audit_id, _ in got.values() if audit_id in rows)
    tally.mismatches = sum(1 for audit_id, sha in got.values() if rows.get(audit_id) != ("ok", sha))
    tally.notes.update(exit_status=status, drained_s=round(drained_s, 2))
    assert set(got) == {"slow", "drip", "echo"}
    assert tally.mismatches == 0
    log = server.log.read_text()
    assert "SIGTERM: not ready" in log and "flushing the audit writer" in log, log
    assert "Traceback" not in log, log
    # after the drain the port is closed: nothing is accepted any more
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=2)
