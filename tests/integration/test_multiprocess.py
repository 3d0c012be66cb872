"""Several gateway processes on one PostgreSQL database, as replicas run in production.

Two ``provenant serve`` processes share a fresh database and one signing key (as replicas
share a Secret) under concurrent load through the openai SDK. The one that sealed last is
SIGKILLed; the survivor keeps answering, seals what both wrote within the promised delay, and
``provenant verify`` passes with every answer a client received in the log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from service.db.engine import make_engine
from service.integrity import signing
from tests.support.serve import new_key
from tests.support.servers import UpstreamServer

pytestmark = pytest.mark.postgres

PROVENANT = [sys.executable, "-m", "service.cli"]
SEAL_INTERVAL_S = 0.3
MAX_MERGE_DELAY_S = 5  # what every receipt promises here
CLIENTS = 6


@pytest.fixture
def env(pg_url: str, tmp_path: Path, upstream: UpstreamServer) -> dict[str, str]:
    key_file = tmp_path / "signing-key.pem"
    signing.load_or_create(key_file, create=True)  # one key for every replica (a Secret)
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        f"routes:\n  - name: echo\n    upstream: {upstream.base_url}\n    upstream_model: echo-1\n"
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PROMETHEUS_"))},
        "PROVENANT_DATABASE_URL": pg_url,
        "PROVENANT_CONFIG": str(routes),
        "PROVENANT_DATA_DIR": str(tmp_path / "data"),
        "PROVENANT_SIGNING_KEY_FILE": str(key_file),
        "PROVENANT_SEAL_INTERVAL_S": str(SEAL_INTERVAL_S),
        "PROVENANT_MAX_MERGE_DELAY_S": str(MAX_MERGE_DELAY_S),
    }


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def replicas(env: dict[str, str], tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            started.append(serve(env, tmp_path, name))
        for replica in started:
            wait_ready(replica)
        yield started
    finally:
        for replica in started:
            if replica.proc.poll() is None:
                replica.proc.terminate()
                replica.proc.wait(30)


def serve(env: dict[str, str], tmp_path: Path, name: str, *extra: str) -> Replica:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / f"serve-{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*PROVENANT, "serve", "--port", str(port), *extra],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(name, proc, port, log)


def wait_ready(replica: Replica) -> None:
    deadline = time.monotonic() + 120  # a loaded CI box starts Python slowly
    while True:
        try:
            if httpx.get(f"{replica.url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert replica.proc.poll() is None, replica.log.read_text()
        assert time.monotonic() < deadline, f"{replica.name} did not start"
        time.sleep(0.1)


def scrape(replica: Replica, key: str, name: str) -> float:
    resp = httpx.get(f"{replica.url}/metrics", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    return 0.0


@dataclass
class Load:
    """Clients asking continuously, round robin over the live replicas."""

    key: str
    targets: list[Replica]
    answered: dict[str, str] = field(default_factory=dict)  # audit id -> replica name
    failures: list[tuple[str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, worker: int) -> None:
        clients: dict[str, openai.OpenAI] = {}
        n = worker
        messages = [{"role": "user", "content": f"client {worker} asks"}]
        while not self.stop.is_set():
            with self.lock:
                target = self.targets[n % len(self.targets)]
            n += 1
            client = clients.setdefault(
                target.url,
                openai.OpenAI(
                    base_url=f"{target.url}/v1", api_key=self.key, max_retries=0, timeout=10
                ),
            )
            try:
                if n % 4 == 0:
                    stream = client.chat.completions.create(
                        model="echo",
                        messages=messages,  # type: ignore[arg-type]
                        stream=True,
                    )
                    audit_id = list(stream)[-1].model_extra["provenance"]["audit_id"]  # type: ignore[index]
                else:
                    answer = client.chat.completions.create(
                        model="echo",
                        messages=messages,  # type: ignore[arg-type]
                    )
                    audit_id = answer.model_extra["provenance"]["audit_id"]  # type: ignore[index]
            except openai.OpenAIError as exc:
                with self.lock:
                    self.failures.append((target.name, type(exc).__name__))
                continue
            with self.lock:
                self.answered[audit_id] = target.name
        for client in clients.values():
            client.close()

    def count(self, name: str) -> int:
        with self.lock:
            return sum(1 for v in self.answered.values() if v == name)


def test_the_survivor_seals_within_the_bound_after_the_sealer_is_killed(
    env: dict[str, str], replicas: list[Replica]
) -> None:
    app_key = new_key(env["PROVENANT_DATABASE_URL"], "acme", "app")
    metrics_key = new_key(env["PROVENANT_DATABASE_URL"], "ops", "metrics")
    load = Load(app_key, list(replicas))
    threads = [threading.Thread(target=load.run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        # both replicas answer and both take turns sealing (a PG advisory lock per batch)
        deadline = time.monotonic() + 20
        while min(load.count(r.name) for r in replicas) < 20:
            assert time.monotonic() < deadline, "load did not reach both replicas"
            time.sleep(0.1)
        last_seal = {
            r.name: scrape(r, metrics_key, "provenant_sealer_last_seal_timestamp_seconds")
            for r in replicas
        }
        assert max(last_seal.values()) > 0, "nobody sealed"
        victim = max(replicas, key=lambda r: last_seal[r.name])
        survivor = next(r for r in replicas if r is not victim)

        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        killed_at = datetime.now().astimezone()
        with load.lock:
            load.targets = [survivor]
        checkpoints_before = scrape(survivor, metrics_key, "provenant_sealer_checkpoints_total")
        answered_before = load.count(survivor.name)
        deadline = time.monotonic() + 20
        while load.count(survivor.name) < answered_before + 40:
            assert time.monotonic() < deadline, "the survivor stopped answering"
            time.sleep(0.1)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)

    # only calls that were in flight to (or sent to) the victim failed
    assert {name for name, _ in load.failures} <= {victim.name}, load.failures
    assert load.count(victim.name) >= 20 and load.count(survivor.name) >= 60
    answered = set(load.answered)

    # the survivor seals everything, the victim's unsealed answers too, within the bound
    engine = make_engine(env["PROVENANT_DATABASE_URL"])
    try:
        deadline = time.monotonic() + MAX_MERGE_DELAY_S + 5
        while True:
            with engine.connect() as conn:
                pending = conn.execute(text("SELECT count(*) FROM log_pending")).scalar()
            if pending == 0:
                break
            assert time.monotonic() < deadline, f"{pending} entries still unsealed"
            time.sleep(0.2)
        with engine.connect() as conn:
            sealed = conn.execute(
                text(
                    "SELECT r.id::text, r.completed_at, min(c.created_at) AS sealed_at"
                    " FROM audit_records r JOIN log_entries e ON e.entry_id = r.id"
                    " JOIN checkpoints c ON c.tree_size > e.idx GROUP BY r.id, r.completed_at"
                )
            ).all()
            after_kill = conn.execute(
                text("SELECT count(*) FROM checkpoints WHERE created_at > :t"), {"t": killed_at}
            ).scalar()
    finally:
        engine.dispose()
    delays = {rid: (sealed_at - done).total_seconds() for rid, done, sealed_at in sealed}
    assert answered <= set(delays), "an answered request is missing from the log"
    worst = max(delays[rid] for rid in answered)
    assert worst <= MAX_MERGE_DELAY_S, f"an answer waited {worst:.2f}s for its checkpoint"
    # the survivor took over at once: its own next ticks signed checkpoints after the kill
    assert after_kill and after_kill >= 1
    assert scrape(survivor, metrics_key, "provenant_sealer_checkpoints_total") > checkpoints_before
    print(
        f"\nanswers: {len(answered)}; worst merge delay {worst:.2f}s (bound {MAX_MERGE_DELAY_S}s)"
    )

    verified = subprocess.run(
        [*PROVENANT, "verify"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK: ")
    survivor_log = survivor.log.read_text()
    assert "Traceback" not in survivor_log and "ERROR" not in survivor_log, survivor_log


def test_workers_share_their_counts_on_every_scrape(env: dict[str, str], tmp_path: Path) -> None:
    """``serve --workers 2``: whichever worker answers the scrape reports both workers' counts
    (prometheus-client's multiprocess mode; ``serve`` makes the directory when none is set)."""
    app_key = new_key(env["PROVENANT_DATABASE_URL"], "acme", "app")
    metrics_key = new_key(env["PROVENANT_DATABASE_URL"], "ops", "metrics")
    shared = tmp_path / "metrics"
    shared.mkdir()
    replica = serve(
        {**env, "PROMETHEUS_MULTIPROC_DIR": str(shared)}, tmp_path, "w2", "--workers", "2"
    )
    try:
        wait_ready(replica)
        body = {"model": "echo", "messages": [{"role": "user", "content": "count"}]}
        sent = 0
        # a new connection each time; the kernel picks the worker, so go on until both have
        # answered some (each worker counts in its own file)
        while len(list(shared.glob("counter_*.db"))) < 2 or sent < 20:
            assert sent < 400, "one worker took every connection"
            resp = httpx.post(
                f"{replica.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {app_key}"},
            )
            assert resp.status_code == 200, resp.text
            sent += 1
        counts = set()
        for _ in range(6):
            resp = httpx.get(
                f"{replica.url}/metrics", headers={"Authorization": f"Bearer {metrics_key}"}
            )
            for family in text_string_to_metric_families(resp.text):
                for s in family.samples:
                    if s.name == "provenant_answers_total" and s.labels.get("route") == "echo":
                        counts.add(s.value)
        assert counts == {float(sent)}
    finally:
        replica.proc.terminate()
        replica.proc.wait(30)


def test_serve_makes_and_removes_a_shared_metrics_directory_for_several_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.cli import _metrics_shared_by

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with _metrics_shared_by(1):
        assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with _metrics_shared_by(2):
        directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert directory.is_dir()
    assert not directory.exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
