"""The integrity report: the latest signed checkpoint and whether it verifies, whether the
stored tree reproduces its root, whether every checkpoint of the period is consistent with it,
and whether each of the tenant's records of the period still matches its log entry.

Scoped to the tenant: problems name only the tenant's own records (``provenant verify`` on the
whole log is the operator's tool).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.integrity import leaf, merkle
from service.integrity.canonical import digest
from service.integrity.log import StoredTree
from service.integrity.models import Checkpoint, LogEntry, SigningKey
from service.integrity.signing import b64url_decode, parse_checkpoint, verify_note
from service.integrity.verify import content_problem
from service.lineage.models import AuditRecord, PolicyDecision, Retrieval
from service.provenance.models import ModelSnapshot
from service.reports.kinds import MAX_LIST_ROWS, Kind, section
from service.reports.model import Table
from service.reports.queries import Scope, logged_records

_BATCH = 2_000


def _check(name: str, ok: bool, detail: str, *, partial: bool = False) -> dict[str, Any]:
    """One check's row: ``ok``, ``failed``, or ``partial`` (what was checked holds, but not
    everything in scope was checked)."""
    result = "failed" if not ok else "partial" if partial else "ok"
    return {"check": name, "result": result, "detail": detail}


def integrity(session: Session, scope: Scope, origin: str) -> list[Table]:
    """The integrity attestation's tables."""
    conn = session.connection()
    publics = [b64url_decode(pk) for pk in session.scalars(select(SigningKey.public_key))]
    latest = session.scalars(select(Checkpoint).order_by(Checkpoint.tree_size.desc())).first()
    checks: list[dict[str, Any]] = []
    cps: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    tree = StoredTree(conn)
    if latest is None:
        checks.append(_check("signed checkpoint", False, "the log has no checkpoint yet"))
    else:
        body = verify_note(latest.note, origin, publics)
        signed = body is not None and parse_checkpoint(body)[1:] == (
            latest.tree_size,
            bytes.fromhex(latest.root_sha256),
        )
        checks.append(
            _check(
                "signed checkpoint",
                signed,
                f"tree size {latest.tree_size}, key {latest.key_id}, signed "
                f"{latest.created_at.isoformat(timespec='seconds')}",
            )
        )
        try:
            root_ok = tree.mth(0, latest.tree_size).hex() == latest.root_sha256
        except LookupError:
            root_ok = False
        checks.append(_check("stored tree reproduces the signed root", root_ok, latest.root_sha256))
        # bounded by the latest read above: a checkpoint the sealer signs meanwhile is for the
        # next attestation (reads here are not one snapshot on SQLite)
        period = (
            Checkpoint.created_at >= scope.start,
            Checkpoint.created_at < scope.end,
            Checkpoint.tree_size <= latest.tree_size,
        )
        in_period = session.scalars(
            select(Checkpoint).where(*period).order_by(Checkpoint.tree_size).limit(MAX_LIST_ROWS)
        ).all()
        total = len(in_period)
        if total == MAX_LIST_ROWS:
            counted = session.scalar(select(func.count()).select_from(Checkpoint).where(*period))
            total = counted or 0
        consistent_all = True
        for cp in in_period:
            try:
                proof = merkle.consistency_path(cp.tree_size, latest.tree_size, tree.mth)
                consistent = merkle.verify_consistency(
                    cp.tree_size,
                    latest.tree_size,
                    proof,
                    bytes.fromhex(cp.root_sha256),
                    bytes.fromhex(latest.root_sha256),
                )
            except LookupError:
                consistent = False
            consistent_all &= consistent
            cps.append(
                {
                    "tree_size": cp.tree_size,
                    "root_sha256": cp.root_sha256,
                    "key_id": cp.key_id,
                    "created_at": cp.created_at,
                    "consistent": consistent,
                }
            )
        checks.append(
            _check(
                "the log only grew (consistency of the period's checkpoints with the latest)",
                consistent_all,
                f"{len(in_period)} checkpoints in the period"
                if total == len(in_period)
                else f"the oldest {len(in_period):,} of the period's {total:,} checkpoints "
                "checked; narrow the period, or run `provenant verify` for the whole log",
                partial=total > len(in_period),
            )
        )
    records, sealed, covered = _records(session, scope, latest, problems)
    checks.append(
        _check(
            "the tenant's records match their log entries",
            not problems,
            f"{records} records in the period, {sealed} sealed, {covered} covered by the latest "
            f"checkpoint, {len(problems)} failing",
        )
    )
    return [
        Table(section(Kind.integrity, "checks"), checks),
        Table(section(Kind.integrity, "checkpoints"), cps),
        Table(section(Kind.integrity, "problems"), problems[:MAX_LIST_ROWS]),
    ]


def _records(
    session: Session, scope: Scope, latest: Checkpoint | None, problems: list[dict[str, Any]]
) -> tuple[int, int, int]:
    """Recompute each record's leaf from its rows and compare with its log entry."""
    snapshots: dict[Any, str] = {}
    total = sealed = covered = 0
    for rows in logged_records(session, scope, LogEntry.leaf_sha256, batch=_BATCH):
        ids = [r[0].id for r in rows]
        retrievals = _by_record(session, Retrieval, ids)
        decisions = _by_record(session, PolicyDecision, ids)
        for rec, idx, logged in rows:
            total += 1
            if idx is None:
                continue
            sealed += 1
            if latest is not None and idx < latest.tree_size:
                covered += 1
            snap = None
            if rec.model_snapshot_id is not None:
                if rec.model_snapshot_id not in snapshots:
                    s = session.get(ModelSnapshot, rec.model_snapshot_id)
                    snapshots[rec.model_snapshot_id] = "missing" if s is None else digest(s.content)
                snap = snapshots[rec.model_snapshot_id]
            row = {c.name: getattr(rec, c.key) for c in AuditRecord.__table__.c}
            content = content_problem(row)
            if content is not None:
                problems.append({"record_id": rec.id, "problem": f"log index {idx}: {content}"})
                continue
            doc = leaf.record_document(
                row,
                retrievals=retrievals.get(rec.id, ()),
                decisions=decisions.get(rec.id, ()),
                snapshot_sha256=snap,
            )
            if leaf.leaf_sha256(doc) != logged:
                problems.append(
                    {
                        "record_id": rec.id,
                        "problem": f"log index {idx}: the record or its lineage rows no longer "
                        "match its log entry",
                    }
                )
    return total, sealed, covered


def _by_record(
    session: Session, table: type[Retrieval] | type[PolicyDecision], ids: list[Any]
) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    cols = list(table.__table__.c)
    for row in session.execute(select(*cols).where(table.record_id.in_(ids))).mappings():
        out.setdefault(row["record_id"], []).append(dict(row))
    return out
