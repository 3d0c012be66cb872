"""Evidence packs: one tenant's period as a ZIP an outside auditor verifies offline with
``provenant verify --pack``.

Contents (``README.md`` in the pack says the same for its reader):

- ``checkpoint.txt``: the latest signed checkpoint (C2SP tlog-checkpoint note);
- ``jwks.json``: the log's public keys (the auditor should rather trust a copy fetched from the
  gateway's ``/.well-known/jwks.json`` and pass it with ``--jwks``);
- ``records.jsonl``: each audit record of the period covered by that checkpoint, with its
  lineage rows (retrievals with the chunk text given to the model, policy decisions, the model
  snapshot's content): exactly what its log leaf commits to;
- ``events.jsonl``: the tenant's admin events of the period (reads, exports, erasures, holds);
- ``proofs.jsonl``: line by line, each entry's log index and RFC 9162 inclusion proof;
- ``unsealed.jsonl``: records of the period the checkpoint does not cover yet (not provable);
- ``sources.jsonl``: what the registry says about each chunk named (document, version, page):
  descriptive, only the chunk text is covered by the log (its hash);
- ``reports/``: every report kind of the period but ``subject``, as JSON, CSV and HTML;
- ``manifest.json``: header (period, tenant, generated at, generator, checkpoint), counts and the
  SHA-256 of every other file.

The JSONL files are stored uncompressed, so a byte changed in place is still attributed to the
record it lands in.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
import zipfile
from collections.abc import Callable
from datetime import date, datetime
from typing import IO, Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import __version__
from service.db.base import utcnow
from service.documents.models import Chunk, Document, DocumentVersion
from service.errors import ExportTooLarge, NotFound
from service.integrity import merkle
from service.integrity.log import StoredTree
from service.integrity.models import LogEntry
from service.integrity.service import jwks
from service.lineage.events import record_event
from service.lineage.models import AdminEvent, AuditRecord, PolicyDecision, Retrieval
from service.provenance.models import ModelSnapshot
from service.reports import service as reports
from service.reports.kinds import Format, Kind
from service.reports.queries import logged_records
from service.reports.render import render

PACK_FORMAT = "provenant-evidence/1"
_BATCH = 1_000
# a record's columns that are not in its line: the snapshot is embedded by content instead
_NOT_IN_LINE = {"model_snapshot_id"}
_RETRIEVAL_COLUMNS = (
    "rank", "chunk_id", "source_ref", "score", "cited", "verified", "document_version_id",
    "chunk_sha256", "superseded", "reported",
)  # fmt: skip
_DECISION_COLUMNS = ("policy_id", "stage", "policy_sha256", "outcome", "detail")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date | uuid.UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, default=_plain, option=orjson.OPT_SORT_KEYS) + b"\n"


class _Lines:
    """A JSONL file being written, with the proof of each of its lines."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = bytearray()
        self.count = 0

    def add(self, obj: dict[str, Any]) -> int:
        self.data += _line(obj)
        self.count += 1
        return self.count


def _proof(tree: StoredTree, idx: int, size: int) -> list[str]:
    return [base64.b64encode(p).decode() for p in merkle.inclusion_path(idx, size, tree.mth)]


def _lineage(
    session: Session, ids: list[uuid.UUID]
) -> tuple[dict[Any, list[dict[str, Any]]], dict[Any, list[dict[str, Any]]], dict[Any, Any]]:
    retrievals: dict[Any, list[dict[str, Any]]] = {}
    chunks: dict[Any, Any] = {}
    stmt = (
        select(Retrieval, Chunk, DocumentVersion, Document)
        .outerjoin(Chunk, Chunk.id == Retrieval.chunk_id)
        .outerjoin(DocumentVersion, DocumentVersion.id == Chunk.version_id)
        .outerjoin(Document, Document.id == DocumentVersion.document_id)
        .where(Retrieval.record_id.in_(ids))
        .order_by(Retrieval.record_id, Retrieval.rank)
    )
    for r, chunk, version, doc in session.execute(stmt):
        row = {c: getattr(r, c) for c in _RETRIEVAL_COLUMNS}
        row["chunk_text"] = None if chunk is None else chunk.text
        retrievals.setdefault(r.record_id, []).append(row)
        if chunk is not None and version is not None and doc is not None:
            chunks[chunk.id] = {
                "chunk_id": chunk.id,
                "collection": doc.collection,
                "document_id": doc.id,
                "source_uri": doc.source_uri,
                "title": version.title,
                "version": version.version,
                "version_id": version.id,
                "content_sha256": version.content_sha256,
                "page": chunk.page,
                "char_start": chunk.char_start,
                "char_end": chunk.char_end,
            }
    decisions: dict[Any, list[dict[str, Any]]] = {}
    for d in session.scalars(select(PolicyDecision).where(PolicyDecision.record_id.in_(ids))):
        decisions.setdefault(d.record_id, []).append({c: getattr(d, c) for c in _DECISION_COLUMNS})
    return retrievals, decisions, chunks


def write_pack(
    session: Session,
    out: IO[bytes],
    *,
    tenant_id: uuid.UUID,
    tenant: str,
    start: datetime,
    end: datetime,
    actor: str,
    origin: str,
    route: str | None = None,
    progress: Callable[[str], None] | None = None,
    max_records: int | None = None,
) -> dict[str, Any]:
    """Write the pack to ``out`` and record the export (``evidence.exported``) in the caller's
    transaction; returns the manifest. ``max_records``: refuse a period holding more (the
    pack is built in memory; over HTTP that memory is the serving process's)."""
    reports.validate(Kind.activity, start, end, None)
    step = progress or (lambda _: None)
    cp = reports.latest_checkpoint(session)
    if cp is None:
        raise NotFound("the log has no signed checkpoint yet: nothing can be proven")
    scope = reports.Request(Kind.activity, tenant_id, tenant, start, end, route).scope()
    if max_records is not None:
        held = session.scalar(select(func.count()).select_from(AuditRecord).where(*scope.records()))
        if held is not None and held > max_records:
            raise ExportTooLarge(
                f"the period holds {held:,} records, more than the {max_records:,} an evidence "
                "pack over HTTP may hold: choose a shorter period, or run `provenant evidence` "
                "next to the database"
            )
    tree = StoredTree(session.connection())
    records, events = _Lines("records.jsonl"), _Lines("events.jsonl")
    proofs, unsealed, sources = _Lines("proofs.jsonl"), _Lines("unsealed.jsonl"), {}
    snapshots: dict[Any, dict[str, Any]] = {}
    step("records")
    for rows in logged_records(session, scope, batch=_BATCH):
        ids = [r[0].id for r in rows]
        retrievals, decisions, chunks = _lineage(session, ids)
        sources.update(chunks)
        for rec, idx in rows:
            row = {
                c.name: getattr(rec, c.key)
                for c in AuditRecord.__table__.c
                if c.name not in _NOT_IN_LINE
            }
            snap = None
            if rec.model_snapshot_id is not None:
                if rec.model_snapshot_id not in snapshots:
                    s = session.get(ModelSnapshot, rec.model_snapshot_id)
                    snapshots[rec.model_snapshot_id] = (
                        {}
                        if s is None
                        else {"snapshot_sha256": s.snapshot_sha256, "content": s.content}
                    )
                snap = snapshots[rec.model_snapshot_id]
            line = {
                "record": row,
                "retrievals": retrievals.get(rec.id, []),
                "policy_decisions": decisions.get(rec.id, []),
                "model_snapshot": snap,
            }
            if idx is None or idx >= cp.tree_size:
                unsealed.add(line)
                continue
            n = records.add(line)
            proofs.add(
                {
                    "file": records.name,
                    "line": n,
                    "entry_id": rec.id,
                    "log_index": idx,
                    "leaf_sha256": rec.leaf_sha256,
                    "proof": _proof(tree, idx, cp.tree_size),
                }
            )
    step("events")
    events_stmt = (
        select(AdminEvent, LogEntry.idx)
        .join(LogEntry, LogEntry.entry_id == AdminEvent.id)
        .where(
            AdminEvent.tenant_id == tenant_id,
            AdminEvent.created_at >= start,
            AdminEvent.created_at < end,
            LogEntry.idx < cp.tree_size,
        )
        .order_by(LogEntry.idx)
    )
    for ev, idx in session.execute(events_stmt):
        n = events.add({"event": {c.name: getattr(ev, c.key) for c in AdminEvent.__table__.c}})
        proofs.add(
            {
                "file": events.name,
                "line": n,
                "entry_id": ev.id,
                "log_index": idx,
                "leaf_sha256": ev.leaf_sha256,
                "proof": _proof(tree, idx, cp.tree_size),
            }
        )
    files: dict[str, bytes] = {
        "checkpoint.txt": cp.note.encode(),
        "jwks.json": orjson.dumps(jwks(session), option=orjson.OPT_INDENT_2),
        "sources.jsonl": b"".join(_line(s) for s in sources.values()),
    }
    for lines in (records, events, proofs, unsealed):
        files[lines.name] = bytes(lines.data)
    for kind in Kind:
        if kind is Kind.subject:
            continue
        step(f"report {kind.value}")
        request = reports.Request(kind, tenant_id, tenant, start, end, route)
        report = reports.build(session, request=request, actor=actor, origin=origin, checkpoint=cp)
        for fmt in (Format.json, Format.csv, Format.html):
            files[f"reports/{kind.value}.{fmt.value}"] = render(report, fmt)
    header = {
        "format": PACK_FORMAT,
        "period": {"from": start.isoformat(), "to": end.isoformat()},
        "filters": {"route": route},
        "tenant": {"id": str(tenant_id), "name": tenant},
        "generated_at": utcnow().isoformat(),
        "generated_by": actor,
        "generator": f"provenant {__version__}",
        "checkpoint": reports.checkpoint_header(cp),
    }
    files["README.md"] = readme(header, records.count, events.count, unsealed.count).encode()
    manifest = {
        **header,
        "counts": {
            "records": records.count,
            "events": events.count,
            "unsealed_records": unsealed.count,
            "sources": len(sources),
        },
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
    }
    files["manifest.json"] = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    step("writing")
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            stored = name.endswith(".jsonl") or name == "checkpoint.txt"
            zf.writestr(name, data, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    record_event(
        session,
        actor=actor,
        action="evidence.exported",
        tenant_id=tenant_id,
        target="evidence",
        detail={
            "from": start.isoformat(),
            "to": end.isoformat(),
            "route": route,
            "checkpoint": cp.tree_size,
            "counts": manifest["counts"],
            "manifest_sha256": hashlib.sha256(files["manifest.json"]).hexdigest(),
        },
    )
    return manifest


def readme(header: dict[str, Any], records: int, events: int, unsealed: int) -> str:
    """The pack's README for an outside auditor."""
    cp = header["checkpoint"] or {}
    return f"""# Provenant evidence pack

Tenant **{header["tenant"]["name"]}**, period {header["period"]["from"]} to
{header["period"]["to"]} (UTC, end exclusive), generated {header["generated_at"]} by
{header["generated_by"]} with {header["generator"]}.

It holds {records} audit records and {events} admin events of the period, each with its
inclusion proof against the signed checkpoint of tree size {cp.get("tree_size")} (root
{cp.get("root_sha256")}, key {cp.get("key_id")}). {unsealed} records of the period were not yet
covered by that checkpoint; they are in `unsealed.jsonl` and cannot be proven by this pack.

## Verify it

1. Get the log's public keys from the operator's gateway, independently of this pack:
   `curl -s https://GATEWAY/.well-known/jwks.json > keys.json`
2. Run, with Provenant installed (`pip install provenant`; no network and no database needed):

       provenant verify --pack pack.zip --jwks keys.json

   Without `--jwks` the pack's own `jwks.json` is trusted, which proves integrity only
   against the pack itself.
3. Exit status 0 and `OK` mean: the checkpoint is signed by a trusted key; every record and
   event recomputes to the leaf hash its inclusion proof places under the checkpoint's root;
   every prompt, answer and choices text matches its salted hash; every chunk text given to a
   model matches the hash the record committed to; every file matches `manifest.json`.
   Any difference is printed as `ALTERED`, naming the record (its id and its line).

To check the log kept growing since, compare the checkpoint with a later one from the gateway
(`GET /v1/audit/consistency?from={cp.get("tree_size")}&to=N`).

## Files

- `checkpoint.txt`: the signed checkpoint (C2SP tlog-checkpoint, Ed25519 signed note)
- `jwks.json`: the log's public keys (RFC 7638 key ids) as the gateway listed them
- `records.jsonl`: one audit record per line with its retrievals (and the chunk text the model
  was given), policy decisions and model snapshot
- `events.jsonl`: admin events: reads of the log, report exports, erasures, holds, ingestions
- `proofs.jsonl`: per line of the two files above: log index, leaf hash, inclusion proof
- `unsealed.jsonl`: records not yet covered by the checkpoint
- `sources.jsonl`: the registry's description of each chunk (document, version, page); only
  the chunk text is covered by the log
- `reports/`: the period's reports (activity, model inventory, source usage, policy
  violations, EU AI Act log, integrity, retention) as JSON, CSV and HTML
- `manifest.json`: header, counts and the SHA-256 of every file

How a leaf is computed: SHA-256(0x00 || RFC 8785 canonical JSON of the record's fields, with
prompt, answer and choices entering only as SHA-256(salt || text)); the exact definition is
`service/integrity/leaf.py` in Provenant's source. Erased content is null in the record; its
salted hashes still verify.
"""
