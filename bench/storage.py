"""Bytes stored and rows written per answer on PostgreSQL: the numbers deploy/README.md's
capacity model uses.

For each content profile it builds a fresh database by the migrations, writes N answers through
the gateway's own write path (``Exchange.record_row`` → ``AuditWriter`` group commits), seals
them with the real sealer (tree nodes, checkpoints, ``log_pending`` emptied), runs ``VACUUM
ANALYZE`` and reads, per table, ``pg_total_relation_size`` (heap + TOAST + indexes) and the
rows inserted and deleted (``pg_stat_user_tables``) and transactions committed
(``pg_stat_database``) during the write and seal phases.

Profiles: ``bench`` is the proxy benchmark's request (a system and a user message, an echo
answer: ~100 characters of content); ``chat`` a typical assistant exchange (2,000 characters of
prompt, 1,000 of answer). Usage::

    .venv/bin/python bench/storage.py [--records 20000] [--pg-admin-url URL] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from service.db.engine import make_engine  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.gateway.writer import AuditWriter  # noqa: E402
from service.integrity import signing  # noqa: E402
from service.integrity.log import Sealer  # noqa: E402
from service.lineage.models import RecordStatus  # noqa: E402
from service.lineage.records import Exchange  # noqa: E402
from service.tenancy.auth import Principal  # noqa: E402
from service.tenancy.models import ApiKey, Role, Tenant  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
TABLES = (
    "audit_records",
    "log_pending",
    "log_entries",
    "tree_nodes",
    "checkpoints",
    "retrievals",
    "policy_decisions",
)
PROFILES = {
    # name: (system prompt, user prompt, answer) lengths in characters
    "bench": (26, 27, 33),
    "chat": (400, 1600, 1000),
}


@dataclass
class Phase:
    inserted: dict[str, int]
    deleted: dict[str, int]
    commits: int
    seconds: float


@dataclass
class Profile:
    name: str
    records: int
    content_chars: int
    write: Phase
    seal: Phase
    bytes_by_table: dict[str, int]
    rows_by_table: dict[str, int]

    @property
    def bytes_per_answer(self) -> float:
        return sum(self.bytes_by_table.values()) / self.records


# words of ordinary English prose: compresses about as well as real prompts and answers do
_VOCABULARY = (
    "the of and to a in is it that for you was with on as have be at this are not but from or "
    "by one had all were we when your can said there use an each which she do how their if will "
    "up other about out many then them these so some her would make like him into time has look "
    "two more write go see number no way could people my than first water been call who oil its "
    "now find long down day did get come made may part policy leave employee benefit contract "
    "retention period audit report patient claim account payment customer request approval"
)
_WORDS = _VOCABULARY.split()


def prose(rng: random.Random, chars: int) -> str:
    """``chars`` characters of word salad, different every time."""
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(_WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _counters(url: str) -> tuple[dict[str, tuple[int, int]], int]:
    """Per table (rows inserted, rows deleted), and transactions committed, as PG counts them
    (call it with every writing connection closed: a backend flushes its counts on exit)."""
    time.sleep(0.5)
    with psycopg.connect(_libpq(url)) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute("SELECT relname, n_tup_ins, n_tup_del FROM pg_stat_user_tables")
        tables = {name: (int(ins), int(dele)) for name, ins, dele in rows}
        commits = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return tables, int(commits[0]) if commits else 0


def _phase(before: Any, after: Any, seconds: float) -> Phase:
    (t0, c0), (t1, c1) = before, after
    inserted = {n: t1[n][0] - t0.get(n, (0, 0))[0] for n in t1 if n in TABLES}
    deleted = {n: t1[n][1] - t0.get(n, (0, 0))[1] for n in t1 if n in TABLES}
    return Phase(inserted, deleted, c1 - c0, seconds)


def measure(admin_url: str, name: str, records: int, chunk: int) -> Profile:
    db = f"provenant_storage_{name}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    url = make_url(admin_url).set(database=db).render_as_string(hide_password=False)
    upgrade(url)
    engine = make_engine(url)
    tenant_id, key_id = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(insert(Tenant).values(id=tenant_id, name="bench"))
        conn.execute(
            insert(ApiKey).values(
                id=key_id, tenant_id=tenant_id, prefix="pvn_bench", key_sha256="0" * 64, role="app"
            )
        )
    principal = Principal(key_id, "pvn_bench", tenant_id, "bench", Role.app)
    engine.dispose()
    system, user, answer = PROFILES[name]
    rng = random.Random(7)
    usage = {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}

    writer = AuditWriter(engine, max_batch=512)
    before = _counters(url)
    writer.start()
    started = time.perf_counter()
    for start in range(0, records, chunk):  # `chunk` answers in flight, as many clients would
        futures = []
        for _ in range(min(chunk, records - start)):
            body = {
                "model": "echo",
                "messages": [
                    {"role": "system", "content": prose(rng, system)},
                    {"role": "user", "content": prose(rng, user)},
                ],
                "max_tokens": 16,
            }
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": prose(rng, answer)},
                    "finish_reason": "stop",
                }
            ]
            ex = Exchange(principal, "echo", "openai", body, "echo-1", started=time.perf_counter())
            ex.upstream_latency_ms = 1.0
            row = ex.record_row(
                status=RecordStatus.ok,
                http_status=200,
                latency_ms=2.0,
                choices=choices,
                usage=usage,
                response_model="echo-1",
            )
            futures.append(writer.submit(ex.rows(row)))
        for fut in futures:
            fut.result(timeout=120)
    seconds = time.perf_counter() - started
    writer.stop()
    engine.dispose()
    write = _phase(before, _counters(url), seconds)

    signer = signing.Signer(signing.Ed25519PrivateKey.generate(), "bench.provenant/log")
    sealer = Sealer(engine, signer, batch=5_000)  # a few checkpoints, as periodic sealing makes
    sealer.register_key()
    engine.dispose()
    before = _counters(url)
    started = time.perf_counter()
    sealer.seal()
    seconds = time.perf_counter() - started
    engine.dispose()
    seal = _phase(before, _counters(url), seconds)

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        sizes = {
            t: int(conn.execute(text(f"SELECT pg_total_relation_size('{t}')")).scalar() or 0)
            for t in TABLES
        }
        rows = {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0) for t in TABLES
        }
    engine.dispose()
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    return Profile(name, records, system + user + answer, write, seal, sizes, rows)


def report(profiles: list[Profile], command: str, elapsed: float) -> str:
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"## Storage per answer on PostgreSQL, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"code `{rev}`; load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- whole run took {elapsed:.0f} s; sizes after `VACUUM ANALYZE`, all answers sealed",
        "",
        "| profile | answers | content chars | bytes/answer | audit_records | log_entries | "
        "tree_nodes | checkpoints | rows written/answer (write + seal) | "
        "transactions/1k answers (write + seal) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for p in profiles:
        n = p.records
        written = sum(p.write.inserted.values()) + sum(p.write.deleted.values())
        sealed = sum(p.seal.inserted.values()) + sum(p.seal.deleted.values())
        lines.append(
            f"| {p.name} | {n} | {p.content_chars} | {p.bytes_per_answer:.0f} | "
            f"{p.bytes_by_table['audit_records'] / n:.0f} | "
            f"{p.bytes_by_table['log_entries'] / n:.0f} | "
            f"{p.bytes_by_table['tree_nodes'] / n:.0f} | "
            f"{p.bytes_by_table['checkpoints'] / n:.1f} | "
            f"{written / n:.2f} + {sealed / n:.2f} | "
            f"{p.write.commits * 1000 / n:.1f} + {p.seal.commits * 1000 / n:.2f} |"
        )
    lines += ["", "Rows per table (inserted / deleted during the phase, per answer):", ""]
    for p in profiles:
        parts = [
            f"{t} +{p.write.inserted.get(t, 0) / p.records:.2f}"
            for t in TABLES
            if p.write.inserted.get(t)
        ]
        seal = [
            f"{t} +{p.seal.inserted.get(t, 0) / p.records:.3f}"
            for t in TABLES
            if p.seal.inserted.get(t)
        ] + [
            f"{t} -{p.seal.deleted.get(t, 0) / p.records:.2f}"
            for t in TABLES
            if p.seal.deleted.get(t)
        ]
        nodes_per_entry = p.rows_by_table["tree_nodes"] / max(p.rows_by_table["log_entries"], 1)
        lines.append(
            f"- {p.name}: write phase {', '.join(parts)} ({p.write.seconds:.1f} s); "
            f"seal phase {', '.join(seal)} ({p.seal.seconds:.1f} s); "
            f"tree_nodes per log entry {nodes_per_entry:.3f}"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--in-flight", type=int, default=256, help="answers submitted at once")
    p.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    command = "python bench/storage.py " + " ".join(sys.argv[1:])
    started = time.monotonic()
    profiles = []
    for name in PROFILES:
        print(f"[storage] {name}: {args.records} answers", file=sys.stderr, flush=True)
        profiles.append(measure(args.pg_admin_url, name, args.records, args.in_flight))
    text_ = report(profiles, command.strip(), time.monotonic() - started)
    print(text_)
    if not args.no_write:
        RESULTS.write_text(RESULTS.read_text().rstrip("\n") + "\n\n" + text_)
    return 0


if __name__ == "__main__":
    sys.exit(main())
