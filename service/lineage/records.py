"""Build an audit record row from one answer's exchange. Pure: no I/O."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import uuid_utils

from service.db.base import utcnow
from service.integrity import leaf
from service.integrity.models import LogPending
from service.lineage.models import AuditRecord, PolicyDecision, RecordStatus, Retrieval
from service.policies import pii
from service.tenancy.auth import Principal

# 2: the record carries (and its leaf covers) retention_class and retain_until
SCHEMA_VERSION = 2

# request fields that are the prompt or the routing key, not parameters
_NOT_PARAMS = frozenset({"messages", "model", "user"})


def sha256_text(value: str) -> str:
    """Hex SHA-256 of UTF-8 text."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def prompt_text(messages: list[Any]) -> str:
    """The stored form of a prompt: its messages as JSON with sorted keys."""
    return orjson.dumps(messages, option=orjson.OPT_SORT_KEYS).decode()


def redact_json(value: Any, redact: Callable[[str], str]) -> Any:
    """The JSON value with ``redact`` applied to every string in it (not to keys). Copy on
    write: a list or object in which nothing changed is returned as it is (most prompts and
    answers have nothing to redact), so the result may share parts with ``value``."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        items = [redact(v) if type(v) is str else redact_json(v, redact) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        changed: dict[str, Any] | None = None
        for k, v in value.items():
            # strings (most values) without a call of this function for each
            new = redact(v) if type(v) is str else redact_json(v, redact)
            if new is not v:
                if changed is None:
                    changed = dict(value)
                changed[k] = new
        return value if changed is None else changed
    return value


def answer_text(choices: list[dict[str, Any]]) -> str:
    """The stored answer: the text of the first choice (all choices are kept in ``choices``)."""
    if not choices:
        return ""
    message = choices[0].get("message") or {}
    content = message.get("content")
    return content if isinstance(content, str) else ""


@dataclass
class Exchange:
    """What is known about one request from its arrival until its record is written."""

    principal: Principal
    route_name: str
    route_kind: str
    body: dict[str, Any]
    upstream_model: str | None
    trace_id: str | None = None
    span_id: str | None = None
    id: uuid.UUID = field(default_factory=lambda: uuid.UUID(bytes=_uuid7_bytes()))
    created_at: datetime = field(default_factory=utcnow)
    started: float = 0.0
    upstream_latency_ms: float | None = None
    # lineage filled by the RAG, registry and policy stages (empty for a plain proxy route)
    retrievals: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # rows with the record id
    # the same decisions as the leaf holds them (``leaf.decision_entry``), when the policy
    # engine made them (None: the leaf makes them from ``decisions``)
    decision_leaves: list[list[Any]] | None = None
    policy_view: list[dict[str, Any]] = field(default_factory=list)  # provenance.policies
    model_snapshot_id: uuid.UUID | None = None
    model_snapshot_sha256: str | None = None
    # registry-linked routes: the snapshot's provenance fields, and whether the registry could
    # not vouch for it within the TTL (None: the route has no registry link)
    model_lineage: dict[str, Any] | None = None
    lineage_stale: bool | None = None
    policy_bundle_sha256: str | None = None
    # how prompt and answer are stored: full, redacted (with ``redact``) or hash_only
    content_mode: str = "full"
    redact: Callable[[str], str] | None = None
    # SHA-256 of the answer as the client received it (what its receipt names)
    delivered_sha256: str | None = None
    # retention class and days (from the policy bundle), if one applies
    retention: tuple[str, int] | None = None
    # the client's Idempotency-Key this answer was reserved for (gateway.idempotency)
    idempotency_key: str | None = None

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def record_row(
        self,
        *,
        status: RecordStatus,
        http_status: int,
        latency_ms: float,
        choices: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
        response_model: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> dict[str, Any]:
        """The ``audit_records`` row for this exchange as it ended."""
        choices = choices or []
        messages = self.body.get("messages") or []
        answer = answer_text(choices)
        self.delivered_sha256 = sha256_text(answer)
        if b"\\u0000" in orjson.dumps(choices):
            # what an upstream sent may hold NUL, which no audit store keeps in text
            choices = redact_json(choices, _no_nul)
            answer = answer_text(choices)
        prompt = prompt_text(messages)
        if self.content_mode == "redacted" and self.redact is not None:
            # a prompt whose JSON has no digit and no @ has no string the redactor changes; and
            # one the redactor left as it was (copy on write: the same list) keeps its text
            if pii.may_hold(prompt):
                redacted = redact_json(messages, self.redact)
                if redacted is not messages:
                    messages, prompt = redacted, prompt_text(redacted)
            choices = redact_json(choices, self.redact)
            answer = answer_text(choices)
        usage = usage or {}
        end_user = self.body.get("user")
        row: dict[str, Any] = {
            "id": self.id,
            "schema_version": SCHEMA_VERSION,
            "tenant_id": self.principal.tenant_id,
            "api_key_id": self.principal.key_id,
            "end_user": end_user if isinstance(end_user, str) else None,
            "route": self.route_name,
            "route_kind": self.route_kind,
            "requested_model": str(self.body.get("model")),
            "upstream_model": self.upstream_model,
            "response_model": _clip(response_model, 200),
            "status": status.value,
            "http_status": http_status,
            "error_code": error_code,
            "error_message": None if error_message is None else _no_nul(error_message),
            "stream": self.stream,
            "params": {k: v for k, v in self.body.items() if k not in _NOT_PARAMS},
            "prompt": prompt,
            "prompt_sha256": sha256_text(prompt),
            "answer": answer,
            "answer_sha256": sha256_text(answer),
            "choices": choices,
            "finish_reason": _clip(choices[0].get("finish_reason"), 64) if choices else None,
            "prompt_tokens": _int(usage.get("prompt_tokens")),
            "completion_tokens": _int(usage.get("completion_tokens")),
            "total_tokens": _int(usage.get("total_tokens")),
            "latency_ms": round(latency_ms, 3),
            "upstream_latency_ms": (
                round(self.upstream_latency_ms, 3) if self.upstream_latency_ms is not None else None
            ),
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "model_snapshot_id": self.model_snapshot_id,
            "lineage_stale": self.lineage_stale,
            "policy_bundle_sha256": self.policy_bundle_sha256,
            "retention_class": None if self.retention is None else self.retention[0],
            "retain_until": (
                None
                if self.retention is None
                else self.created_at + timedelta(days=self.retention[1])
            ),
            "created_at": self.created_at,
            "completed_at": utcnow(),
        }
        leaf.seal_content(row)
        if self.content_mode == "hash_only":
            # the salted hashes (and the salt) stay: whoever holds the content can prove it
            row["prompt"] = row["answer"] = row["choices"] = None
        row["leaf_sha256"] = leaf.leaf_sha256(
            leaf.record_document(
                row,
                retrievals=self._lineage(self.retrievals),
                decisions=self.decisions,
                decision_entries=self.decision_leaves,
                snapshot_sha256=self.model_snapshot_sha256,
            )
        )
        return row

    def _lineage(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**r, "record_id": self.id} for r in rows]

    def rows(self, record: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
        """Everything this answer writes, by table, for one transaction: the record and its
        pending log entry (the sealer gives it a log index)."""
        pending = {
            "entry_id": record["id"],
            "kind": leaf.RECORD,
            "leaf_sha256": record["leaf_sha256"],
            "created_at": record["completed_at"],
        }
        rows: dict[Any, list[dict[str, Any]]] = {
            AuditRecord.__table__: [record],
            LogPending.__table__: [pending],
        }
        if self.retrievals:
            rows[Retrieval.__table__] = self._lineage(self.retrievals)
        if self.decisions:
            rows[PolicyDecision.__table__] = self.decisions
        return rows


def _int(value: Any) -> int | None:
    """An upstream's count, if it is one JSON can carry exactly (I-JSON: |n| < 2**53)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    return None


def _uuid7_bytes() -> bytes:
    return uuid_utils.uuid7().bytes


def _clip(value: Any, size: int) -> str | None:
    """Bound a string from outside (an upstream's model name, finish reason) to its column."""
    return _no_nul(value[:size]) if isinstance(value, str) else None


def _no_nul(text: str) -> str:
    """NUL replaced by U+FFFD (PostgreSQL text cannot hold NUL)."""
    return text.replace("\x00", "\ufffd")


def parse_traceparent(header: str | None) -> tuple[str | None, str | None]:
    """W3C ``traceparent`` → (trace id, parent span id), or (None, None) if absent/invalid."""
    if not header:
        return None, None
    parts = header.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None, None
    trace_id, span_id = parts[1].lower(), parts[2].lower()
    try:
        int(trace_id, 16), int(span_id, 16)
    except ValueError:
        return None, None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None, None
    return trace_id, span_id
