"""RAG benchmark: ingestion rate, and what retrieval adds to an answer at 100 to 10,000 chunks.

One run, everything on loopback, side by side:

1. **Ingestion** of generated multi-page PDFs through the real path (``documents.service.ingest``,
   what ``provenant ingest`` runs): pages/s and chunks/s, beside the rate of extraction and
   chunking alone (pypdf + chunker, in memory), so the share of the stores is visible.
2. Another collection grows (generated Markdown policies, same ingest path) to each size of
   ``--sizes``; at each size:
   - ``retrieve``: ``Retriever.search`` alone in-process (sparse query vector, Qdrant query with
     the tenant/active filter, SQL resolution of the hits), p50/p99;
   - end to end through ``provenant serve`` (one worker) and ``provenant demo-upstream``,
     sequential requests (c=1) with the same question: an ``openai`` route to the upstream, a
     ``rag`` route whose generator is that route, and the built-in ``extractive`` route;
     "added by retrieval" = rag p50 - openai p50.

Qdrant is local mode under the run's data dir unless ``--qdrant-url`` names a server. Prints
markdown and appends it to bench/RESULTS.md (``--no-record`` to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.config import Settings  # noqa: E402
from service.db.engine import make_engine, make_sessionmaker  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.documents import service  # noqa: E402
from service.documents.chunking import chunk_pages  # noqa: E402
from service.documents.extract import extract  # noqa: E402
from service.documents.registry import Registry  # noqa: E402
from service.retrieval.retriever import Retriever  # noqa: E402
from service.tenancy.service import create_key, ensure_tenant  # noqa: E402

TOPICS = {
    "leave": "annual leave days carry over manager approval request calendar year",
    "expenses": "expense claim receipt reimbursement finance portal payroll per diem",
    "travel": "travel rail flight economy hotel night booking director approval",
    "security": "password authentication laptop encryption incident phishing report device",
    "remote": "remote work office core hours equipment allowance vpn country",
    "conduct": "gifts hospitality conflict interest whistleblowing retaliation compliance",
}
FILLER_TEXT = """the employee team company policy must should may within after before each every
process request record system approval responsible document update"""
FILLER = FILLER_TEXT.split()
QUESTION = "How many days of annual leave can be carried over with manager approval?"


def log(msg: str) -> None:
    print(f"[rag-bench] {msg}", file=sys.stderr, flush=True)


def paragraph(rng: random.Random) -> str:
    topic = TOPICS[rng.choice(list(TOPICS))].split()
    words = [
        rng.choice(topic if rng.random() < 0.4 else FILLER) for _ in range(rng.randint(60, 110))
    ]
    words.insert(rng.randint(0, len(words)), str(rng.randint(1, 60)))
    return " ".join(words).capitalize() + "."


def markdown_policy(rng: random.Random, n: int) -> bytes:
    body = "\n\n".join(paragraph(rng) for _ in range(rng.randint(6, 12)))
    return f"# Policy {n}\n\n{body}\n".encode()


def pdf_document(rng: random.Random, pages: int) -> bytes:
    from fpdf import FPDF  # a test dependency (make bench installs it)

    doc = FPDF()
    doc.set_font("Helvetica", size=10)
    for _ in range(pages):
        doc.add_page()
        doc.multi_cell(0, 5, "\n\n".join(paragraph(rng) for _ in range(4)))
    return bytes(doc.output())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Store:
    """The run's registry, opened in this process (closed while a gateway holds local mode)."""

    def __init__(self, settings: Settings, tenant: str) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        with self.sessions() as session:
            self.tenant_id = ensure_tenant(session, tenant).id
            session.commit()
        self.registry: Registry | None = None

    def open(self) -> Registry:
        if self.registry is None:
            self.registry = Registry.build(self.settings, self.sessions)
        return self.registry

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
            self.registry = None

    def ingest(self, name: str, data: bytes, collection: str = "bench") -> int:
        registry = self.open()
        result = service.ingest(
            registry.sessions,
            registry.indexes.get(),
            registry.embedder,
            tenant_id=self.tenant_id,
            upload=service.Upload(collection=collection, source_uri=name, data=data, filename=name),
            limits=registry.limits,
            actor="bench",
        )
        return result.document.latest_version.chunk_count


@contextlib.contextmanager
def process(
    cmd: list[str], env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(url: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def end_to_end(
    work: Path, env: dict[str, str], key: str, routes: list[str], requests: int
) -> dict[str, list[float]]:
    """Sequential chat requests per route through a fresh gateway; latencies in ms."""
    upstream_port, port = free_port(), free_port()
    routes_file = work / "routes.yaml"
    routes_file.write_text(
        "routes:\n"
        f"  - {{name: direct, kind: openai, upstream: 'http://127.0.0.1:{upstream_port}/v1',"
        " upstream_model: echo-1}\n"
        "  - {name: rag, kind: rag, collection: bench, top_k: 5, generator: direct}\n"
        "  - {name: extractive, kind: extractive, collection: bench, top_k: 5}\n"
    )
    env = {**env, "PROVENANT_CONFIG": str(routes_file), "PROVENANT_PORT": str(port)}
    cli = [sys.executable, "-m", "service.cli"]
    with (
        process([*cli, "demo-upstream", "--port", str(upstream_port)], env, work / "upstream.log"),
        process([*cli, "serve"], env, work / "gateway.log"),
    ):
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        out: dict[str, list[float]] = {r: [] for r in routes}
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
        ) as client:
            body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 64}
            for route in routes:  # warm-up
                client.post(
                    "/v1/chat/completions", json={**body, "model": route}
                ).raise_for_status()
            for _ in range(requests):  # interleaved, so drift in machine load hits all alike
                for route in routes:
                    t = time.perf_counter()
                    resp = client.post("/v1/chat/completions", json={**body, "model": route})
                    out[route].append((time.perf_counter() - t) * 1000)
                    resp.raise_for_status()
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="collection sizes in chunks")
    parser.add_argument("--pdf-docs", type=int, default=10)
    parser.add_argument("--pdf-pages", type=int, default=20)
    parser.add_argument("--queries", type=int, default=30, help="in-process retrievals per size")
    parser.add_argument("--requests", type=int, default=20, help="requests per route per size")
    parser.add_argument("--database-url", default=None, help="default: SQLite in the work dir")
    parser.add_argument("--qdrant-url", default=None, help="default: local mode in the work dir")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    run_started = time.perf_counter()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = ROOT / "bench" / ".work" / f"rag-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    work.mkdir(parents=True)
    url = args.database_url or f"sqlite:///{work}/provenant.db"
    upgrade(url)
    env = {
        **os.environ,
        "PROVENANT_DATABASE_URL": url,
        "PROVENANT_DATA_DIR": str(work / "data"),
        "PROVENANT_SEAL_INTERVAL_S": "2",
    }
    if args.qdrant_url:
        env["PROVENANT_QDRANT_URL"] = args.qdrant_url
        env["PROVENANT_QDRANT_PREFIX"] = f"bench{uuid.uuid4().hex[:8]}_"
    settings = Settings(
        database_url=url,
        data_dir=work / "data",
        qdrant_url=args.qdrant_url,
        qdrant_prefix=env.get("PROVENANT_QDRANT_PREFIX", "provenant_"),
    )
    store = Store(settings, "bench")
    with store.sessions() as session:
        key = create_key(session, tenant="bench", role="app").key
        session.commit()
    rng = random.Random(20261121)

    # 1. ingestion of multi-page PDFs
    log(f"generating {args.pdf_docs} PDFs of {args.pdf_pages} pages")
    pdfs = [pdf_document(rng, args.pdf_pages) for _ in range(args.pdf_docs)]
    t = time.perf_counter()
    for data in pdfs:
        extracted = extract(data, "application/pdf", max_pages=10_000)
        chunk_pages(extracted.pages, paginated=True, max_chars=settings.chunk_chars)
    parse_s = time.perf_counter() - t
    log("ingesting the PDFs")
    store.open()
    t = time.perf_counter()
    chunks = sum(store.ingest(f"{i}.pdf", data, "pdf") for i, data in enumerate(pdfs))
    ingest_s = time.perf_counter() - t
    pages = args.pdf_docs * args.pdf_pages
    ingestion = (pages, chunks, ingest_s, parse_s)

    # 2. retrieval at each size
    rows = []
    total, n = 0, 0
    for size in sizes:
        log(f"growing the collection to {size} chunks (now {total})")
        t, grown = time.perf_counter(), 0
        while total < size:
            added = store.ingest(f"md/{n}.md", markdown_policy(rng, n))
            total, grown, n = total + added, grown + added, n + 1
        grow_rate = grown / (time.perf_counter() - t) if grown else None
        retriever = Retriever(store.open())
        retriever.search(tenant_id=store.tenant_id, collection="bench", query=QUESTION, top_k=5)
        alone = []
        for _ in range(args.queries):
            t = time.perf_counter()
            hits = retriever.search(
                tenant_id=store.tenant_id, collection="bench", query=QUESTION, top_k=5
            )
            alone.append((time.perf_counter() - t) * 1000)
        assert len(hits) == 5, hits
        if not args.qdrant_url:
            store.close()  # local mode admits one process: hand it to the gateway
        log(f"{total} chunks: retrieve p50 {percentile(alone, 0.5):.1f} ms; end to end")
        e2e = end_to_end(work, env, key, ["direct", "rag", "extractive"], args.requests)
        rows.append((total, grow_rate, alone, e2e))

    store.close()
    store.engine.dispose()
    report(args, settings, url, ingestion, rows, time.perf_counter() - run_started)


def report(
    args: argparse.Namespace,
    settings: Settings,
    url: str,
    ingestion: tuple[int, int, float, float],
    rows: list[tuple[int, float | None, list[float], dict[str, list[float]]]],
    run_s: float,
) -> None:
    rev = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    qdrant = f"server {args.qdrant_url}" if args.qdrant_url else "local mode (qdrant-client)"
    sql = "SQLite (WAL, synchronous=FULL)" if url.startswith("sqlite") else "PostgreSQL"
    pages, chunks, ingest_s, parse_s = ingestion
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    p50, p99 = (lambda v: percentile(v, 0.5)), (lambda v: percentile(v, 0.99))
    lines = [
        f"## RAG: ingestion and retrieval, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `.venv/bin/python bench/rag.py {' '.join(sys.argv[1:])}`".rstrip() + "",
        f"- machine: {os.cpu_count()} CPUs ({platform.machine()}), Python "
        f"{platform.python_version()}; load average at the end {load} (other jobs share "
        "the CPUs: absolute figures are pessimistic, compare within the run)",
        f"- code: `{rev}`; Qdrant {qdrant}; SQL {sql}; chunks of at most "
        f"{settings.chunk_chars} characters, top_k 5, sparse vectors only; whole run {run_s:.0f} s",
        "",
        "| ingestion | pages | chunks | seconds | pages/s | chunks/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| extract + chunk only (pypdf, in memory) | {pages} | {chunks} | {parse_s:.2f} "
        f"| {pages / parse_s:,.1f} | {chunks / parse_s:,.1f} |",
        f"| `ingest` (extract, chunk, vectors, Qdrant inactive, SQL commit, activate) | {pages} "
        f"| {chunks} | {ingest_s:.2f} | {pages / ingest_s:,.1f} | {chunks / ingest_s:,.1f} |",
        "",
        "| chunks | ingest chunks/s (Markdown) | retrieve alone p50 / p99 ms | `openai` p50 / p99 "
        "| `rag` p50 / p99 | `extractive` p50 / p99 | added by retrieval (rag - openai, p50) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for total, grow_rate, alone, e2e in rows:
        direct, rag, ext = e2e["direct"], e2e["rag"], e2e["extractive"]
        lines.append(
            f"| {total:,} | {f'{grow_rate:,.1f}' if grow_rate else '-'} "
            f"| {p50(alone):.1f} / {p99(alone):.1f} | {p50(direct):.1f} / {p99(direct):.1f} "
            f"| {p50(rag):.1f} / {p99(rag):.1f} | {p50(ext):.1f} / {p99(ext):.1f} "
            f"| +{p50(rag) - p50(direct):.1f} ms |"
        )
    lines += [
        "",
        f"{args.queries} in-process retrievals and {args.requests} requests per route and size "
        "(sequential, interleaved across routes, after one warm-up each); latencies in ms, "
        f"median {statistics.median(rows[-1][2]):.1f} ms alone at the largest size.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
