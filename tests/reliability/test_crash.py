"""Crash: a real ``provenant serve`` is SIGKILLed several times under concurrent load from the
official openai SDK (whole and streamed answers) and restarted on the same port. Every answer
a client received has its committed record, the record's answer hash is the hash of the text
the client got, and ``provenant verify`` then passes over the whole log."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
from sqlalchemy import text

from service.db.engine import make_engine
from tests.reliability.conftest import Tally, ask, sha256
from tests.support.serve import PROVENANT, ServeProcess, free_port, new_key, serve_env
from tests.support.servers import UpstreamServer

pytestmark = pytest.mark.postgres
CLIENTS = 6
KILLS = 3
ANSWERS_PER_LIFE = 20  # acknowledged answers between two kills


class Load:
    """Clients asking continuously; what each was told, by audit id."""

    def __init__(self, url: str, key: str, tally: Tally) -> None:
        self.url, self.key, self.tally = url, key, tally
        self.acknowledged: dict[str, str] = {}  # audit id -> sha256 of the text received
        self.failed = 0
        self.stop = threading.Event()

    def run(self, worker: int) -> None:
        client = openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=10
        )
        n = 0
        while not self.stop.is_set():
            n += 1
            prompt = f"c{worker}-{n}-{uuid.uuid4().hex[:6]}"
            with self.tally.lock:
                self.tally.sent += 1
            try:
                got, extra = ask(client, prompt, stream=n % 3 == 0)
                audit_id = (extra or {}).get("provenance", {}).get("audit_id")
            except Exception:  # killed mid-request: connection refused, reset, cut stream
                with self.tally.lock:
                    self.failed += 1
                time.sleep(0.2)  # the server is down: retry as a client would, not in a spin
                continue
            if audit_id is None:  # a stream cut before its provenance chunk: not acknowledged
                with self.tally.lock:
                    self.failed += 1
                continue
            with self.tally.lock:
                self.acknowledged[audit_id] = sha256(got)
        client.close()

    def count(self) -> int:
        with self.tally.lock:
            return len(self.acknowledged)


def test_sigkill_under_load_loses_no_acknowledged_answer(
    pg_url: str, upstream: UpstreamServer, tmp_path: Path, tally: Tally
) -> None:
    routes = (
        f"routes:\n  - name: echo\n    upstream: {upstream.base_url}\n    upstream_model: echo-1\n"
    )
    env = serve_env(pg_url, tmp_path, routes, seal_interval_s="0.3", max_merge_delay_s="10")
    key = new_key(pg_url, "crash", "app")
    server = ServeProcess(env, free_port(), tmp_path / "serve.log").start()
    load = Load(server.url, key, tally)
    threads = [threading.Thread(target=load.run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        for _ in range(KILLS):
            target = load.count() + ANSWERS_PER_LIFE
            deadline = time.monotonic() + 60
            while load.count() < target:
                assert time.monotonic() < deadline, "the load stalled"
                time.sleep(0.02)
            server.kill()  # with requests in flight and records in the writer's queue
            server.start()
        target = load.count() + ANSWERS_PER_LIFE
        while load.count() < target:
            time.sleep(0.02)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)

    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = {
                str(rid): (status, answer_sha)
                for rid, status, answer_sha in conn.execute(
                    text("SELECT id, status, answer_sha256 FROM audit_records")
                )
            }
        # the survivor seals what the killed processes left pending
        deadline = time.monotonic() + 20
        while True:
            with engine.connect() as conn:
                pending = conn.execute(text("SELECT count(*) FROM log_pending")).scalar()
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        engine.dispose()
    server.terminate()

    tally.acknowledged = len(load.acknowledged)
    found = [a for a in load.acknowledged if a in rows]
    tally.records = len(found)
    tally.mismatches = sum(
        1 for audit_id, got in load.acknowledged.items() if rows.get(audit_id) != ("ok", got)
    )
    tally.notes.update(kills=KILLS, failed_or_cut=load.failed, records_total=len(rows))
    assert tally.mismatches == 0
    assert tally.acknowledged >= (KILLS + 1) * ANSWERS_PER_LIFE
    assert load.failed > 0, "no request was in flight at a kill: the test proved nothing"

    verified = subprocess.run(
        [*PROVENANT, "verify"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
