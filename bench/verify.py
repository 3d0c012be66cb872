"""``provenant verify`` throughput against its hashing floor, on N records (default 1,000,000).

One run: builds a fresh store (SQLite in bench/.work by default, or --postgres URL for a new
database there), fills it through the real leaf code (``Exchange.record_row``, the same as the
gateway's write path) with bulk inserts, seals it with the real sealer, then measures side by side:

* ``floor``: raw SHA-256 (0x00 || canonical leaf bytes) over the very bytes verify hashes,
  precomputed in memory, nothing else;
* ``read floor``: reading every logged record row through the bare sqlite3 driver;
* ``verify``: ``service.integrity.verify.verify`` on the store (read every row, check salted
  content hashes, rebuild every leaf and the whole tree, check every checkpoint signature), once
  with the Python walk (``native=False``) and once with the native one (``integrity.leafscan``,
  SQLite only), which must confirm every record itself (none left for the Python re-check).

Prints a markdown table and appends it to bench/RESULTS.md. Target: verify >= 0.3x the floor.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select  # noqa: E402

from service.db.engine import make_engine  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.integrity import leaf, signing  # noqa: E402
from service.integrity.canonical import canonical_trusted  # noqa: E402
from service.integrity.log import Sealer  # noqa: E402
from service.integrity.models import LogPending  # noqa: E402
from service.integrity.verify import verify  # noqa: E402
from service.lineage.models import AuditRecord, RecordStatus  # noqa: E402
from service.lineage.records import Exchange  # noqa: E402
from service.tenancy.auth import Principal  # noqa: E402
from service.tenancy.models import ApiKey, Role, Tenant  # noqa: E402

WORK = ROOT / "bench" / ".work"
ORIGIN = "bench.provenant/log"
BATCH = 10_000


def fill(url: str, n: int) -> None:
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
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        records, pending = [], []
        for i in range(start, min(n, start + BATCH)):
            body = {
                "model": "support",
                "messages": [
                    {"role": "system", "content": "You answer from the HR handbook."},
                    {"role": "user", "content": f"How many days of leave do I get? ({i})"},
                ],
                "temperature": 0.2,
                "max_tokens": 256,
                "user": f"employee-{i % 5000}",
            }
            ex = Exchange(principal, "support", "openai", body, "llama-3-8b-support-v7")
            choices = [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"You get 25 days ({i})."},
                    "finish_reason": "stop",
                }
            ]
            usage = {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}
            row = ex.record_row(
                status=RecordStatus.ok,
                http_status=200,
                latency_ms=12.5 + i % 100,
                choices=choices,
                usage=usage,
                response_model="llama-3-8b-support-v7",
            )
            rows = ex.rows(row)
            records.extend(rows[AuditRecord.__table__])
            pending.extend(rows[LogPending.__table__])
        with engine.begin() as conn:
            conn.execute(insert(AuditRecord), records)
            conn.execute(insert(LogPending), pending)
        done = min(n, start + BATCH)
        rate = done / (time.perf_counter() - started)
        print(f"\rfilled {done:,}/{n:,} ({rate:,.0f}/s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    engine.dispose()


def canonical_leaves(url: str) -> list[bytes]:
    """The canonical leaf bytes of every record, in log order (untimed preparation)."""
    engine = make_engine(url)
    out: list[bytes] = []
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=BATCH).execute(
            select(AuditRecord).order_by(AuditRecord.id)
        )
        for row in result.mappings():
            out.append(canonical_trusted(leaf.record_document(row)))
    engine.dispose()
    return out


def read_floor(engine: Any) -> float:
    """Seconds to read every logged record row (all columns) in log order through the bare DB
    driver, nothing done with the values: what any verifier reading the store pays first."""
    query = (
        "SELECT l.idx, l.leaf_sha256, r.* FROM log_entries l "
        "JOIN audit_records r ON r.id = l.entry_id ORDER BY l.idx"
    )
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        t = time.perf_counter()
        cur.execute(query)
        while cur.fetchmany(BATCH):
            pass
        elapsed = time.perf_counter() - t
        cur.close()
    finally:
        raw.close()
    return elapsed


def floor(blobs: list[bytes]) -> float:
    sha = hashlib.sha256
    t = time.perf_counter()
    for b in blobs:
        sha(b"\x00" + b).digest()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--postgres", help="admin URL of a PostgreSQL server (a new database is made)")
    ap.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    run_started = time.perf_counter()
    if args.postgres:
        import psycopg
        from sqlalchemy.engine import make_url

        name = f"provenant_verify_bench_{uuid.uuid4().hex[:8]}"
        libpq = make_url(args.postgres).set(drivername="postgresql")
        with psycopg.connect(libpq.render_as_string(False), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        url = make_url(args.postgres).set(database=name).render_as_string(False)
        store = "PostgreSQL (local)"
    else:
        path = WORK / "verify.db"
        for suffix in ("", "-wal", "-shm", ".sealer.lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
        store = "SQLite (WAL, synchronous=FULL)"
    upgrade(url)
    fill(url, args.records)
    engine = make_engine(url)
    signer = signing.Signer(signing.Ed25519PrivateKey.generate(), ORIGIN)
    sealer = Sealer(engine, signer)
    sealer.register_key()
    t = time.perf_counter()
    sealed = sealer.seal()
    seal_s = time.perf_counter() - t
    print(f"sealed {sum(s.entries for s in sealed):,} in {seal_s:.1f} s", file=sys.stderr)

    blobs = canonical_leaves(url)
    avg_bytes = sum(map(len, blobs)) / len(blobs)
    floor_s = min(floor(blobs) for _ in range(3))
    del blobs
    read_s = min(read_floor(engine) for _ in range(2))
    t = time.perf_counter()
    report = verify(engine, origin=ORIGIN, native=False)
    verify_s = time.perf_counter() - t
    assert report.ok and report.tree_size == args.records, report.problems[:5]
    native_s = None
    if engine.dialect.name == "sqlite":
        t = time.perf_counter()
        report = verify(engine, origin=ORIGIN)
        native_s = time.perf_counter() - t
        assert report.ok and report.tree_size == args.records, report.problems[:5]
        assert report.natively_confirmed == args.records, "the native scan left records to Python"
    engine.dispose()

    n = args.records
    floor_rate, verify_rate, read_rate = n / floor_s, n / verify_s, n / read_s
    best_rate = verify_rate if native_s is None else n / native_s
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    cmd = "python bench/verify.py " + " ".join(sys.argv[1:])
    verdict = "PASS" if best_rate >= 0.3 * floor_rate else "FAIL"
    lines = [
        f"## `provenant verify` throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `.venv/bin/{cmd.strip()}`",
        f"- machine: {os.cpu_count()} CPUs ({platform.machine()}), "
        f"Python {platform.python_version()}",
        f"- code: `{rev}`; store: {store}; {n:,} records "
        f"(avg canonical leaf {avg_bytes:.0f} bytes), {len(sealed)} checkpoints; "
        f"sealing took {seal_s:.1f} s; whole run "
        f"{time.perf_counter() - run_started:.0f} s",
        "",
        "| what | seconds | records/s | / floor |",
        "|---|---:|---:|---:|",
        f"| floor: SHA-256 of the canonical leaf bytes (in memory, best of 3) | {floor_s:.2f} "
        f"| {floor_rate:,.0f} | 1.00 |",
        f"| read floor: every logged record row through the bare driver, values untouched "
        f"(best of 2) | {read_s:.2f} | {read_rate:,.0f} | {read_rate / floor_rate:.2f} |",
        f"| `verify`, Python walk (read rows, check content hashes, rebuild leaves and tree, "
        f"check signatures) | {verify_s:.2f} | {verify_rate:,.0f} | "
        f"{verify_rate / floor_rate:.2f} |",
        *(
            []
            if native_s is None
            else [
                f"| `verify`, native walk (the same checks; `integrity.leafscan`, every record "
                f"confirmed natively) | {native_s:.2f} | {n / native_s:,.0f} | "
                f"{n / native_s / floor_rate:.2f} |"
            ]
        ),
        "",
        f"Target verify >= 0.3x the floor: **{verdict}**",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
