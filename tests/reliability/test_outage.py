"""Database outage: the gateway's own PostgreSQL (a private cluster, not the shared server) is
crashed mid-load (``pg_ctl stop -m immediate``) and started again. During the outage clients
get ``503 lineage_store_unavailable``, never an answer without a record; afterwards service
resumes by itself; every acknowledged answer has exactly one record, with the hash of the text
the client got, and no request has two."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
from sqlalchemy import text

from service.app import create_app
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from tests.conftest import make_settings, new_tenant, routes_for
from tests.reliability.conftest import Tally, ask, sha256
from tests.support.pgcluster import PrivateCluster
from tests.support.servers import GatewayServer, UpstreamServer

CLIENTS = 4
DOWN_S = 2.0


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    pg = PrivateCluster().init()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


class Load:
    def __init__(self, url: str, key: str, tally: Tally) -> None:
        self.url, self.key, self.tally = url, key, tally
        self.acknowledged: list[tuple[float, str, str, str]] = []  # (t, audit id, sha, prompt)
        self.refused: list[float] = []  # 503 lineage_store_unavailable (whole or in-stream)
        self.other: list[str] = []
        self.stop = threading.Event()

    def run(self, worker: int) -> None:
        client = openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, timeout=15
        )
        n = 0
        while not self.stop.is_set():
            n += 1
            prompt = f"o{worker}-{n}-{uuid.uuid4().hex[:6]}"
            with self.tally.lock:
                self.tally.sent += 1
            try:
                got, extra = ask(client, prompt, stream=n % 3 == 0)
            except openai.APIStatusError as exc:
                body = exc.body if isinstance(exc.body, dict) else {}
                with self.tally.lock:
                    if exc.status_code == 503 and body.get("code") == "lineage_store_unavailable":
                        self.refused.append(time.monotonic())
                    else:
                        self.other.append(f"{exc.status_code} {body.get('code')}")
                time.sleep(0.05)
                continue
            except openai.APIError as exc:  # an SSE error event: the stream's record failed
                body = exc.body if isinstance(exc.body, dict) else {}
                with self.tally.lock:
                    if body.get("code") == "lineage_store_unavailable":
                        self.refused.append(time.monotonic())
                    else:
                        self.other.append(f"stream {body.get('code')}")
                continue
            with self.tally.lock:
                self.acknowledged.append(
                    (time.monotonic(), extra["provenance"]["audit_id"], sha256(got), prompt)
                )
        client.close()


def test_database_crash_mid_load_fails_closed_and_recovers(
    cluster: PrivateCluster, upstream: UpstreamServer, tmp_path: Path, tally: Tally
) -> None:
    upgrade(cluster.url)
    engine = make_engine(cluster.url)
    keys = new_tenant(make_sessionmaker(engine))
    settings = make_settings(
        cluster.url, tmp_path, store_probe_interval_s=0.2, key_cache_ttl_s=60, seal_interval_s=0.5
    )
    gateway = GatewayServer(create_app(settings, routes_for(upstream.base_url))).start()
    load = Load(gateway.url, keys.app, tally)
    threads = [threading.Thread(target=load.run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        down_at = time.monotonic()
        cluster.crash()
        crashed = datetime.now(UTC)  # pg_ctl has returned: the server is down
        time.sleep(DOWN_S)
        # down until the restart begins: PostgreSQL may take commits before pg_ctl returns
        restart_at = time.monotonic()
        cluster.start()
        up_at = time.monotonic()
        deadline = up_at + 30  # recovers by itself: no restart, no operator
        while not [a for a in load.acknowledged if a[0] > up_at + 0.5]:
            assert time.monotonic() < deadline, "service did not resume after the database"
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
        gateway.stop()

    with engine.connect() as conn:
        rows: dict[str, tuple[str, str]] = {}
        completed: dict[str, datetime] = {}
        for rid, status, answer_sha, done in conn.execute(
            text("SELECT id, status, answer_sha256, completed_at FROM audit_records")
        ):
            rows[str(rid)] = (status, answer_sha)
            completed[str(rid)] = done
        per_prompt = Counter(
            prompt
            for (prompt,) in conn.execute(
                text("SELECT prompt FROM audit_records WHERE status = 'ok'")
            )
        )
    engine.dispose()
    acknowledged = {audit_id: sha for _, audit_id, sha, _ in load.acknowledged}
    tally.acknowledged = len(load.acknowledged)
    tally.records = sum(1 for a in acknowledged if a in rows)
    tally.mismatches = sum(1 for a, sha in acknowledged.items() if rows.get(a) != ("ok", sha))
    duplicated = sum(1 for count in per_prompt.values() if count > 1)
    during = [t for t in load.refused if down_at <= t <= up_at + 1]
    # an answer a client got while the database was down must have been committed before the
    # crash (and only delivered late, on a loaded machine): none may be written after it
    answered_during = [
        a for a in load.acknowledged if down_at < a[0] < restart_at and completed[a[1]] >= crashed
    ]
    resumed = min(a[0] for a in load.acknowledged if a[0] > up_at) - up_at
    tally.notes.update(
        refused_503=len(load.refused),
        resumed_after_s=round(resumed, 2),
        answered_while_down=len(answered_during),
        duplicated=duplicated,
        other_errors=len(load.other),
    )
    assert tally.mismatches == 0
    assert len(acknowledged) == len(load.acknowledged), "one audit id given to two answers"
    assert duplicated == 0
    assert during, "no client saw the outage: the test proved nothing"
    assert not answered_during, "an answer was acknowledged while the database was down"
    assert not load.other, load.other
