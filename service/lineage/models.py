"""The audit record (one row per answer, or refused answer, that reached a route), its lineage
rows (retrievals, policy decisions) and the admin events that share its log."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, Double, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, PortableJSON, UTCDateTime
from service.documents import models as _documents  # noqa: F401  (chunks, an FK target)
from service.provenance import models as _provenance  # noqa: F401  (model_snapshots, an FK target)


class RecordStatus(StrEnum):
    """How an answer ended."""

    ok = "ok"
    upstream_error = "upstream_error"
    upstream_timeout = "upstream_timeout"
    upstream_rejected = "upstream_rejected"
    client_disconnected = "client_disconnected"
    policy_blocked = "policy_blocked"
    lineage_unavailable = "lineage_unavailable"
    retrieval_error = "retrieval_error"  # the vector store or the embeddings endpoint failed


class AuditRecord(Base):
    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_tenant_created", "tenant_id", "created_at"),
        Index("ix_audit_records_tenant_end_user", "tenant_id", "end_user"),
        Index("ix_audit_records_tenant_snapshot", "tenant_id", "model_snapshot_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # UUIDv7: time-ordered
    schema_version: Mapped[int] = mapped_column(Integer, default=1)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"))
    api_key_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("api_keys.id"))
    end_user: Mapped[str | None] = mapped_column(String(256))
    route: Mapped[str] = mapped_column(String(200))
    route_kind: Mapped[str] = mapped_column(String(32))
    requested_model: Mapped[str] = mapped_column(String(200))
    upstream_model: Mapped[str | None] = mapped_column(String(200))
    response_model: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    stream: Mapped[bool] = mapped_column(Boolean)
    params: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    # content: erasure and retention null these (and the salt); the salted hashes stay
    prompt: Mapped[str | None] = mapped_column(Text)
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    answer: Mapped[str | None] = mapped_column(Text)
    answer_sha256: Mapped[str | None] = mapped_column(String(64))
    choices: Mapped[list[dict[str, Any]] | None] = mapped_column(PortableJSON)
    content_salt: Mapped[str | None] = mapped_column(String(32))
    # SHA-256(salt || content): what the integrity leaf covers, so erased content stays verifiable
    prompt_salted_sha256: Mapped[str | None] = mapped_column(String(64))
    answer_salted_sha256: Mapped[str | None] = mapped_column(String(64))
    choices_salted_sha256: Mapped[str | None] = mapped_column(String(64))
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column()
    upstream_latency_ms: Mapped[float | None] = mapped_column()
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
    model_snapshot_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("model_snapshots.id")
    )
    # registry-linked routes only: true when the registry could not confirm the snapshot within
    # the route's TTL (the last known version was served); NULL for routes without a registry
    lineage_stale: Mapped[bool | None] = mapped_column(Boolean)
    policy_bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    # retention (from the policy bundle; schema_version >= 2, covered by the leaf): after
    # retain_until the content may be erased by `provenant retention run`, hashes stay
    retention_class: Mapped[str | None] = mapped_column(String(64))
    retain_until: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # SHA-256(0x00 || canonical leaf document): the record's entry in the integrity log
    leaf_sha256: Mapped[str | None] = mapped_column(String(64))


class Retrieval(Base):
    """One source an answer was given (record x rank), and whether the answer cited it.

    A snapshot at answer time: the chunk (immutable), its version and text hash, and whether
    that version had already been superseded. ``reported`` is what an external RAG app said
    about a source (``rag-passthrough``), kept as reported whether or not it verified.
    """

    __tablename__ = "retrievals"
    __table_args__ = {"sqlite_with_rowid": False}  # see PolicyDecision

    record_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("audit_records.id"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    chunk_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("chunks.id"))
    source_ref: Mapped[str | None] = mapped_column(String(500))
    score: Mapped[float | None] = mapped_column(Double)
    cited: Mapped[bool] = mapped_column(Boolean, default=False)
    verified: Mapped[bool | None] = mapped_column(Boolean)
    document_version_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("document_versions.id")
    )
    chunk_sha256: Mapped[str | None] = mapped_column(String(64))
    superseded: Mapped[bool | None] = mapped_column(Boolean)  # at answer time
    reported: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON)


class PolicyDecision(Base):
    """What one policy decided about one answer, with the hash of the policy that decided it."""

    __tablename__ = "policy_decisions"
    # on SQLite the rows live in their primary key's B-tree (clustered by record): no rowid
    # table beside a key index, so an answer's rows cost one B-tree insert each and about a
    # third fewer pages per commit (PostgreSQL ignores this)
    __table_args__ = {"sqlite_with_rowid": False}

    record_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("audit_records.id"), primary_key=True
    )
    policy_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    stage: Mapped[str] = mapped_column(String(8), primary_key=True)
    policy_sha256: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON)


class AdminEvent(Base):
    """Something done to the gateway rather than through it (keys, erasure, reads of the log...)."""

    __tablename__ = "admin_events"
    __table_args__ = (Index("ix_admin_events_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # UUIDv7
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("tenants.id"))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(500))
    detail: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    leaf_sha256: Mapped[str] = mapped_column(String(64))


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` within its tenant, reserved for one answer (``record_id``,
    known before the answer is asked for) with the fingerprint of the request it came with.

    Reserved before the upstream call, so the primary key decides between concurrent
    duplicates, in one process or many; the reservation lapses at ``lease_until`` if its answer
    never gets a record (a crashed process), and the key expires at ``expires_at``."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    record_id: Mapped[uuid.UUID] = mapped_column(Uuid)  # no FK: reserved before it is written
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class IdempotentReplay(Base):
    """What a retry with the same key is given back: the answer as first delivered, written in
    the transaction of its record. ``response`` is content: null when the record keeps no
    clear text (``hash_only`` / ``redacted``), and nulled by erasure and retention."""

    __tablename__ = "idempotent_replays"

    record_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("audit_records.id"), primary_key=True
    )
    stream: Mapped[bool] = mapped_column(Boolean)
    response: Mapped[dict[str, Any] | None] = mapped_column(PortableJSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
