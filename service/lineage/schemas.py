"""API shapes of audit records."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from service.provenance.schemas import ModelLineageOut


class AuditRecordSummary(BaseModel):
    """A record in a listing: the envelope, without prompt and answer text."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tenant_id: uuid.UUID
    api_key_id: uuid.UUID
    end_user: str | None
    route: str
    route_kind: str
    requested_model: str
    upstream_model: str | None
    response_model: str | None
    status: str
    http_status: int
    error_code: str | None
    stream: bool
    finish_reason: str | None
    prompt_sha256: str | None
    answer_sha256: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    latency_ms: float
    upstream_latency_ms: float | None
    trace_id: str | None
    span_id: str | None
    model_snapshot_id: uuid.UUID | None
    lineage_stale: bool | None
    created_at: datetime
    completed_at: datetime
    leaf_sha256: str | None


class PolicyDecisionOut(BaseModel):
    """One policy's decision about the record's answer."""

    model_config = ConfigDict(from_attributes=True)

    policy_id: str
    stage: str
    policy_sha256: str
    outcome: str
    detail: dict[str, Any] | None


class RecordSource(BaseModel):
    """A source of the answer as the record keeps it, resolved against the registry."""

    ref: int
    chunk_id: uuid.UUID | None
    document_id: uuid.UUID | None
    collection: str | None
    title: str | None
    source_uri: str | None
    version: int | None
    version_id: uuid.UUID | None
    content_sha256: str | None
    page: int | None
    char_start: int | None
    char_end: int | None
    chunk_sha256: str | None
    score: float | None
    cited: bool
    verified: bool | None
    superseded: bool | None  # at answer time
    current_at_answer_time: bool | None
    superseded_at: datetime | None  # when the version was superseded, even after the answer
    source_ref: str | None
    reported: dict[str, Any] | None


class AuditRecordOut(AuditRecordSummary):
    """A whole record, with its policy decisions."""

    schema_version: int
    policy_bundle_sha256: str | None = None
    policies: list[PolicyDecisionOut] = []
    error_message: str | None
    params: dict[str, Any]
    prompt: str | None
    answer: str | None
    choices: list[dict[str, Any]] | None
    # registry-linked routes: the model snapshot that served the answer, as it was taken
    model: ModelLineageOut | None = None
    sources: list[RecordSource] = []


class AuditRecordPage(BaseModel):
    """One page of a listing; pass ``next_cursor`` back as ``cursor`` for the next."""

    object: str = "list"
    data: list[AuditRecordSummary]
    has_more: bool
    next_cursor: uuid.UUID | None
