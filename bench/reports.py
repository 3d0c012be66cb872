"""Reports over a million records on PostgreSQL: the ``activity`` and ``source-usage`` reports
(built and rendered, as ``/v1/reports`` serves them) beside the bare SQL aggregate each stands
on, interleaved in one run.

    .venv/bin/python bench/reports.py [--records 1000000] [--rounds 5]

Needs PostgreSQL (``PROVENANT_BENCH_POSTGRES_URL``, default the test server); creates a
dedicated database, bulk-loads it with ``generate_series`` (one tenant, 30 days, four routes,
a quarter of the records retrieval-augmented with three sources each from 20 documents in two
versions) and drops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.reports import queries
from service.reports import service as reports
from service.reports.kinds import Format, Kind
from service.reports.render import render

ADMIN = os.environ.get("PROVENANT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
START = datetime(2026, 10, 1, tzinfo=UTC)

LOAD = """
INSERT INTO tenants (id, name, created_at) VALUES (%(tenant)s, 'bench', now());
INSERT INTO api_keys (id, tenant_id, prefix, key_sha256, role, created_at)
  VALUES (%(key)s, %(tenant)s, 'benchkey0000', repeat('0', 64), 'app', now());
INSERT INTO documents (id, tenant_id, collection, source_uri, created_at)
  SELECT md5('doc' || d)::uuid, %(tenant)s, 'hr', 'doc-' || d || '.pdf', now()
  FROM generate_series(1, 20) d;
INSERT INTO document_versions (id, document_id, version, title, content_sha256, media_type,
    size_bytes, pages, chunk_count, ingested_at)
  SELECT md5('ver' || d || '-' || v)::uuid, md5('doc' || d)::uuid, v, 'Document ' || d,
         md5('content' || d || v) || md5('x' || d || v), 'application/pdf', 1000, 5, 5, now()
  FROM generate_series(1, 20) d, generate_series(1, 2) v;
INSERT INTO document_supersessions (version_id, superseded_by, superseded_at)
  SELECT md5('ver' || d || '-1')::uuid, md5('ver' || d || '-2')::uuid, %(mid)s
  FROM generate_series(1, 20) d;
INSERT INTO chunks (id, tenant_id, version_id, ordinal, page, char_start, char_end, text,
    text_sha256)
  SELECT md5('chunk' || d || '-' || v || '-' || c)::uuid, %(tenant)s,
         md5('ver' || d || '-' || v)::uuid, c, c, 0, 40, 'passage ' || d || v || c,
         md5('t' || d || v || c) || md5('u' || d || v || c)
  FROM generate_series(1, 20) d, generate_series(1, 2) v, generate_series(1, 5) c;
INSERT INTO audit_records (id, schema_version, tenant_id, api_key_id, end_user, route,
    route_kind, requested_model, upstream_model, response_model, status, http_status, stream,
    params, prompt_sha256, answer_sha256, prompt_tokens, completion_tokens, total_tokens,
    latency_ms, created_at, completed_at, retention_class)
  SELECT md5('rec' || g)::uuid, 2, %(tenant)s, %(key)s, 'user-' || (g %% 5000),
         (ARRAY['support-bot', 'hr-rag', 'echo', 'guarded'])[1 + g %% 4],
         (ARRAY['openai', 'rag', 'openai', 'openai'])[1 + g %% 4],
         (ARRAY['support-bot', 'hr-rag', 'echo', 'guarded'])[1 + g %% 4],
         (ARRAY['support-v7', 'cite-1', 'echo-1', 'echo-1'])[1 + g %% 4],
         (ARRAY['support-v7', 'cite-1', 'echo-1', 'echo-1'])[1 + g %% 4],
         CASE WHEN g %% 4 = 3 AND g %% 10 = 3 THEN 'policy_blocked'
              WHEN g %% 97 = 0 THEN 'upstream_error' ELSE 'ok' END,
         200, false, '{}'::jsonb, md5('p' || g) || md5('q' || g), md5('a' || g) || md5('b' || g),
         20 + g %% 50, 10 + g %% 200, 30 + g %% 50 + g %% 200, (g %% 1000) / 10.0,
         %(start)s + make_interval(secs => g * 2592000.0 / %(n)s),
         %(start)s + make_interval(secs => g * 2592000.0 / %(n)s + 0.05), 'hipaa-6y'
  FROM generate_series(1, %(n)s) g;
INSERT INTO retrievals (record_id, rank, chunk_id, score, cited, verified, document_version_id,
    chunk_sha256, superseded)
  SELECT md5('rec' || g)::uuid, r,
         md5('chunk' || (1 + (g / 4 + r) %% 20) || '-' || v.v || '-' || (1 + r))::uuid,
         1.0 / r, r = 1 AND g %% 9 <> 1, true,
         md5('ver' || (1 + (g / 4 + r) %% 20) || '-' || v.v)::uuid, repeat('0', 64), false
  FROM generate_series(1, %(n)s) g
  CROSS JOIN generate_series(1, 3) r
  CROSS JOIN LATERAL (SELECT CASE WHEN %(start)s + make_interval(secs => g * 2592000.0 / %(n)s)
                                   < %(mid)s THEN 1 ELSE 2 END AS v) v
  WHERE g %% 4 = 1;
ANALYZE;
"""


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    name = f"provenant_bench_reports_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(ADMIN), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN).set(database=name).render_as_string(hide_password=False)
    try:
        run(url, args.records, args.rounds)
    finally:
        with psycopg.connect(_libpq(ADMIN), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(url: str, n: int, rounds: int) -> None:
    upgrade(url)
    tenant, key = uuid.uuid4(), uuid.uuid4()
    end = START + timedelta(days=30, seconds=1)
    started = time.perf_counter()
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        for statement in LOAD.split(";\n"):
            if not statement.strip():
                continue
            conn.execute(
                statement,
                {
                    "tenant": tenant,
                    "key": key,
                    "n": n,
                    "start": START,
                    "mid": START + timedelta(days=15),
                },
            )
        retrievals = conn.execute("SELECT count(*) FROM retrievals").fetchone()
    took = time.perf_counter() - started
    print(f"loaded {n:,} records, {retrievals[0]:,} retrievals in {took:.0f} s")
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    scope = queries.Scope(tenant, START, end)
    results: dict[str, list[float]] = {}

    def bare(kind: Kind) -> None:
        with sessions() as s:
            if kind is Kind.activity:
                queries.activity(s, scope)
            else:
                queries.version_usage(s, scope)

    def report(kind: Kind, fmt: Format) -> None:
        with sessions() as s:
            request = reports.Request(kind, tenant, "bench", START, end)
            built = reports.build(s, request=request, actor="bench", origin="bench")
            render(built, fmt)

    for kind in (Kind.activity, Kind.source_usage):
        bare(kind)  # warm the cache once
    for _ in range(rounds):
        for kind in (Kind.activity, Kind.source_usage):
            results.setdefault(f"{kind} bare", []).append(timed(lambda k=kind: bare(k)))
            for fmt in (Format.json, Format.html):
                results.setdefault(f"{kind} report {fmt}", []).append(
                    timed(lambda k=kind, f=fmt: report(k, f))
                )
    engine.dispose()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\n{n:,} records, {rounds} interleaved rounds; uptime: {load}\n")
    print(f"| {'what':<34} | median ms | min ms | vs bare |")
    print(f"|{'-' * 36}|-----------|--------|---------|")
    for kind in (Kind.activity, Kind.source_usage):
        base = statistics.median(results[f"{kind} bare"])
        for label in (f"{kind} bare", f"{kind} report json", f"{kind} report html"):
            med = statistics.median(results[label])
            print(
                f"| {label:<34} | {med:9,.0f} | {min(results[label]):6,.0f} | {med / base:6.2f}x |"
            )


if __name__ == "__main__":
    main()
