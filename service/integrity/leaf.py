"""Leaf documents: what the integrity log commits to for each audit record and admin event.

A leaf is SHA-256(0x00 || RFC 8785 canonical JSON of the leaf document). The document holds every
field of the row, except that content (prompt, answer, choices) enters only as SHA-256(salt ||
content): the salt is stored beside the content and erased with it, so an erased record still
verifies and nothing left behind links back to what was erased. JSON-valued fields enter as the
SHA-256 of their canonical JSON; floats as their ``repr`` (exact for a double); the record's
lineage rows (retrievals, policy decisions, the model snapshot's hash) are part of its leaf, so
altering any of them is detected. Records of schema version 2 on also commit to their retention
class and retain-until time. The same functions build leaves at write time and in
``provenant verify``; an independent verifier needs only this description.

A second implementation of this description, in C, is ``_leafscan.c`` (``provenant verify``'s
native scan of SQLite stores, see ``leafscan``); it only ever confirms a leaf, Python judges every
other, and ``tests/unit/test_leafscan.py`` and ``tests/integration/test_native_verify.py`` hold it
to the leaves built here. A change to the leaf is made in both (and ``LEAF_VERSION`` in both).
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from service.integrity.canonical import canonical_trusted, digest

LEAF_VERSION = 1
RECORD = "record"
EVENT = "event"

# the columns of audit_records that enter the leaf as they are (strings, ints, bools, nulls)
RECORD_FIELDS = (
    "schema_version",
    "end_user",
    "route",
    "route_kind",
    "requested_model",
    "upstream_model",
    "response_model",
    "status",
    "http_status",
    "error_code",
    "error_message",
    "stream",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "trace_id",
    "span_id",
    "policy_bundle_sha256",
    "prompt_salted_sha256",
    "answer_salted_sha256",
    "choices_salted_sha256",
)
CONTENT_FIELDS = ("prompt", "answer", "choices")


def new_salt() -> str:
    """A fresh 128-bit content salt, hex."""
    return os.urandom(16).hex()


def salted_sha256(salt: str, content: str | None) -> str | None:
    """SHA-256(salt bytes || UTF-8 content), hex; None for absent content."""
    if content is None:
        return None
    return hashlib.sha256(bytes.fromhex(salt) + content.encode("utf-8")).hexdigest()


def choices_text(choices: Any) -> str | None:
    """The canonical text of the ``choices`` JSON (what its salted hash is taken over)."""
    return None if choices is None else orjson.dumps(choices, option=orjson.OPT_SORT_KEYS).decode()


def timestamp(value: datetime) -> str:
    """A timestamp as the leaf writes it: ISO 8601 in UTC with microseconds (``+00:00``)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _float(value: float | None) -> str | None:
    return None if value is None else repr(float(value))


def decision_entry(
    policy_id: str, stage: str, policy_sha256: str, outcome: str, detail: Any
) -> list[Any]:
    """What a record's leaf holds of one policy decision."""
    return [policy_id, stage, policy_sha256, outcome, None if detail is None else digest(detail)]


def record_document(
    row: Mapping[str, Any],
    *,
    retrievals: Iterable[Mapping[str, Any]] = (),
    decisions: Iterable[Mapping[str, Any]] = (),
    decision_entries: Iterable[list[Any]] | None = None,
    snapshot_sha256: str | None = None,
) -> dict[str, Any]:
    """The leaf document of an audit record row and its lineage rows. The decisions come as
    their rows, or as their ``decision_entry`` lists already made (``decision_entries``:
    the policy engine makes each once per decision it shares between answers)."""
    doc: dict[str, Any] = {name: row[name] for name in RECORD_FIELDS}
    doc["v"] = LEAF_VERSION
    doc["kind"] = RECORD
    doc["id"] = str(row["id"])
    doc["tenant_id"] = str(row["tenant_id"])
    doc["api_key_id"] = str(row["api_key_id"])
    doc["params_sha256"] = digest(row["params"])
    doc["latency_ms"] = _float(row["latency_ms"])
    doc["upstream_latency_ms"] = _float(row["upstream_latency_ms"])
    doc["created_at"] = timestamp(row["created_at"])
    doc["completed_at"] = timestamp(row["completed_at"])
    doc["model_snapshot_sha256"] = snapshot_sha256
    if row["schema_version"] >= 2:
        # retention: set when the record is written, so shortening it later is detected
        doc["retention_class"] = row["retention_class"]
        until = row["retain_until"]
        doc["retain_until"] = None if until is None else timestamp(until)
    # present only on records of registry-linked routes, so the leaves of records without a
    # registry link (and of every record written before the field existed) are unchanged
    if row.get("lineage_stale") is not None:
        doc["lineage_stale"] = bool(row["lineage_stale"])
    doc["retrievals"] = [_retrieval(r) for r in sorted(retrievals, key=lambda r: int(r["rank"]))]
    if decision_entries is None:
        decision_entries = [
            decision_entry(
                d["policy_id"], d["stage"], d["policy_sha256"], d["outcome"], d["detail"]
            )
            for d in decisions
        ]
    doc["policies"] = sorted(decision_entries, key=_BY_STAGE_AND_POLICY)
    return doc


_BY_STAGE_AND_POLICY = operator.itemgetter(1, 0)


def _retrieval(r: Mapping[str, Any]) -> list[Any]:
    """A retrieval row in the leaf: rank, chunk, reference, score, cited, verified; then the
    version, the chunk's text hash, superseded-at-answer-time and the digest of what an
    external RAG app reported."""
    version = r.get("document_version_id")
    reported = r.get("reported")
    return [
        r["rank"],
        None if r["chunk_id"] is None else str(r["chunk_id"]),
        r["source_ref"],
        _float(r["score"]),
        bool(r["cited"]),
        r["verified"],
        None if version is None else str(version),
        r.get("chunk_sha256"),
        r.get("superseded"),
        None if reported is None else digest(reported),
    ]


def event_document(row: Mapping[str, Any]) -> dict[str, Any]:
    """The leaf document of an admin event row."""
    return {
        "v": LEAF_VERSION,
        "kind": EVENT,
        "id": str(row["id"]),
        "tenant_id": None if row["tenant_id"] is None else str(row["tenant_id"]),
        "actor": row["actor"],
        "action": row["action"],
        "target": row["target"],
        "detail_sha256": None if row["detail"] is None else digest(row["detail"]),
        "created_at": timestamp(row["created_at"]),
    }


def leaf_sha256(doc: dict[str, Any]) -> str:
    """Hex SHA-256(0x00 || canonical JSON of the document): the RFC 6962 leaf hash."""
    return hashlib.sha256(b"\x00" + canonical_trusted(doc)).hexdigest()


def seal_content(row: dict[str, Any]) -> None:
    """Give a new record row its salt and salted content hashes (in place)."""
    salt = new_salt()
    row["content_salt"] = salt
    row["prompt_salted_sha256"] = salted_sha256(salt, row.get("prompt"))
    row["answer_salted_sha256"] = salted_sha256(salt, row.get("answer"))
    row["choices_salted_sha256"] = salted_sha256(salt, choices_text(row.get("choices")))
