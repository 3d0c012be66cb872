"""The audit record: one row per answer (or refused answer) that reached a route."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, PortableJSON, UTCDateTime


class RecordStatus(StrEnum):
    """How an answer ended."""

    ok = "ok"
    upstream_error = "upstream_error"
    upstream_timeout = "upstream_timeout"
    upstream_rejected = "upstream_rejected"
    client_disconnected = "client_disconnected"


class AuditRecord(Base):
    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_tenant_created", "tenant_id", "created_at"),
        Index("ix_audit_records_tenant_end_user", "tenant_id", "end_user"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # UUIDv7: time-ordered
    schema_version: Mapped[int] = mapped_column(Integer, default=1)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    api_key_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id"))
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
    prompt: Mapped[str | None] = mapped_column(Text)
    prompt_sha256: Mapped[str] = mapped_column(String(64))
    answer: Mapped[str | None] = mapped_column(Text)
    answer_sha256: Mapped[str] = mapped_column(String(64))
    choices: Mapped[list[dict[str, Any]] | None] = mapped_column(PortableJSON)
    finish_reason: Mapped[str | None] = mapped_column(String(64))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column()
    upstream_latency_ms: Mapped[float | None] = mapped_column()
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime)
