"""``Idempotency-Key``: a retried request gets the answer (and audit id) it got the first time
instead of a second answer and a second record.

A key is per tenant. The first request with a key reserves it, in one short transaction
before the upstream is asked, for the record id its answer will have; the primary key
settles concurrent duplicates in one process or across replicas (the loser gets ``409
idempotency_key_in_use``, which the OpenAI SDKs retry). When the answer ends ``ok`` its record
and a replay row (the answer as delivered) commit together, so a later retry with the same key
and the same body is given that answer again, with the same ``provenance``; with another body
it is refused (``422 idempotency_key_reused``). An answer that failed, or a reservation whose
answer never got a record (a crashed process: after ``lease``), leaves the key free to be
taken over by the retry. Keys expire after ``ttl``; retention deletes them.

The replay holds content, so it follows the record's content mode: kept only where the record
keeps the clear text (``full``); a ``redacted`` or ``hash_only`` answer, or one whose content
was erased, is refused on retry (``410 idempotency_replay_unavailable``, audit id named).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import uuid_utils
from sqlalchemy import Table, delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.db.base import utcnow
from service.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotentReplayUnavailable,
    InvalidIdempotencyKey,
)
from service.lineage.models import AuditRecord, IdempotencyKey, IdempotentReplay, RecordStatus
from service.tenancy.auth import Principal

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe and the IETF draft use


def parse_key(value: str | None) -> str | None:
    """The header's key, or None when absent; 400 when it is not 1-255 visible ASCII chars."""
    if value is None:
        return None
    if not _KEY.fullmatch(value):
        raise InvalidIdempotencyKey(
            f"the {HEADER} header must be 1 to {MAX_KEY_CHARS} visible ASCII characters "
            "(no spaces), e.g. a UUID",
            param=HEADER,
        )
    return value


def fingerprint(body: dict[str, Any]) -> str:
    """SHA-256 of the request body as canonical-enough JSON (sorted keys): what a retry must
    match to be given the first answer."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Claim:
    """A key reserved for the answer this request will give (``record_id``)."""

    key: str
    record_id: uuid.UUID


@dataclass(frozen=True)
class Replay:
    """The answer first given for a key, to give again."""

    record_id: uuid.UUID
    stream: bool
    response: dict[str, Any] | None


def reserve(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    key: str,
    request_sha256: str,
    now: datetime,
    lease_s: float,
    ttl_s: float,
) -> Claim | Replay:
    """Reserve ``key`` for a new answer, or return the answer it already has.

    Raises IdempotencyKeyReused (another body), IdempotencyKeyInUse (the first request is
    still being answered), and IntegrityError when a concurrent request reserved it first (the
    caller retries once, then sees that reservation). The caller commits."""
    found = session.execute(
        select(IdempotencyKey, AuditRecord.status, IdempotentReplay)
        .outerjoin(AuditRecord, AuditRecord.id == IdempotencyKey.record_id)
        .outerjoin(IdempotentReplay, IdempotentReplay.record_id == IdempotencyKey.record_id)
        .where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
    ).first()
    record_id = uuid.UUID(bytes=uuid_utils.uuid7().bytes)
    lease_until = now + timedelta(seconds=lease_s)
    expires_at = now + timedelta(seconds=ttl_s)
    if found is None:
        session.add(
            IdempotencyKey(
                tenant_id=tenant_id,
                key=key,
                request_sha256=request_sha256,
                record_id=record_id,
                created_at=now,
                lease_until=lease_until,
                expires_at=expires_at,
            )
        )
        session.flush()
        return Claim(key, record_id)
    held, status, replay = found
    expired = held.expires_at <= now
    if not expired and held.request_sha256 != request_sha256:
        raise IdempotencyKeyReused(
            f"the {HEADER} was already used with a different request body; "
            "use a new key for a new request",
            param=HEADER,
        )
    if not expired and status == RecordStatus.ok.value and replay is not None:
        return Replay(held.record_id, replay.stream, replay.response)
    if not expired and status is None and held.lease_until > now:
        raise IdempotencyKeyInUse(
            f"a request with this {HEADER} is still being answered; retry shortly",
            param=HEADER,
            headers={"Retry-After": "1"},
        )
    # expired, failed, or its answer never got a record (lease over): this request takes it
    taken = session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.key == key,
            IdempotencyKey.record_id == held.record_id,
        )
        .values(
            request_sha256=request_sha256,
            record_id=record_id,
            created_at=now,
            lease_until=lease_until,
            expires_at=expires_at,
        )
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise IdempotencyKeyInUse(
            f"a request with this {HEADER} is being answered; retry shortly",
            param=HEADER,
            headers={"Retry-After": "1"},
        )
    return Claim(key, record_id)


class Idempotency:
    """Reserves keys for the pipeline (one short transaction each) and renders replays."""

    def __init__(self, sessions: sessionmaker[Session], *, ttl_s: float, lease_s: float) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._lease_s = lease_s

    async def begin(self, principal: Principal, key: str, body: dict[str, Any]) -> Claim | Replay:
        """Reserve ``key`` for this request, or return the answer it already has."""
        request_sha256 = fingerprint(body)
        return await run_in_threadpool(self._reserve, principal.tenant_id, key, request_sha256)

    def _reserve(self, tenant_id: uuid.UUID, key: str, request_sha256: str) -> Claim | Replay:
        for attempt in (1, 2):
            try:
                with self._sessions() as session, session.begin():
                    return reserve(
                        session,
                        tenant_id=tenant_id,
                        key=key,
                        request_sha256=request_sha256,
                        now=utcnow(),
                        lease_s=self._lease_s,
                        ttl_s=self._ttl_s,
                    )
            except IntegrityError:
                if attempt == 2:
                    raise IdempotencyKeyInUse(
                        f"a request with this {HEADER} is being answered; retry shortly",
                        param=HEADER,
                        headers={"Retry-After": "1"},
                    ) from None
        raise AssertionError("unreachable")

    async def release(self, principal: Principal, claim: Claim) -> None:
        """Free a key whose answer ended without a record (the store failed, the request was
        refused before reaching a route...), so a retry need not wait for the lease. Best
        effort: if the store is down the lease frees it."""
        with contextlib.suppress(SQLAlchemyError):
            await run_in_threadpool(self._release, principal.tenant_id, claim)

    def _release(self, tenant_id: uuid.UUID, claim: Claim) -> None:
        with self._sessions() as session, session.begin():
            recorded = select(AuditRecord.id).where(AuditRecord.id == claim.record_id)
            session.execute(
                delete(IdempotencyKey)
                .where(
                    IdempotencyKey.tenant_id == tenant_id,
                    IdempotencyKey.key == claim.key,
                    IdempotencyKey.record_id == claim.record_id,
                    ~recorded.exists(),
                )
                .execution_options(synchronize_session=False)
            )


def replay_row(record_id: uuid.UUID, *, stream: bool, response: dict[str, Any] | None) -> Any:
    """The ``idempotent_replays`` table and row an ``ok`` answer with a key commits."""
    table: Table = IdempotentReplay.__table__  # type: ignore[assignment]
    return table, {
        "record_id": record_id,
        "stream": stream,
        "response": response,
        "created_at": utcnow(),
    }


def replay_response(replay: Replay, audit_header: str) -> Response:
    """The first answer again: the same JSON body, or the same answer as one SSE chunk per
    choice, the usage, the same ``provenance`` chunk and ``[DONE]``."""
    headers = {audit_header: str(replay.record_id), REPLAYED_HEADER: "true"}
    if replay.response is None:
        raise IdempotentReplayUnavailable(
            f"the answer first given for this {HEADER} was recorded (audit id "
            f"{replay.record_id}) but its content is not kept, so it cannot be given again; "
            "read the record, or use a new key",
            param=HEADER,
            headers=headers,
        )
    if not replay.stream:
        return Response(
            orjson.dumps(replay.response), media_type="application/json", headers=headers
        )
    r = replay.response
    base = {"id": r.get("id"), "object": "chat.completion.chunk", "created": r.get("created")}
    events: list[dict[str, Any]] = [
        {**base, "model": r.get("model"), "choices": [{**c, "delta": c.get("message") or {}}]}
        for c in r.get("choices") or []
    ]
    for event in events:
        event["choices"][0].pop("message", None)
    if r.get("usage") is not None:
        events.append({**base, "model": r.get("model"), "choices": [], "usage": r["usage"]})
    events.append(
        {**base, "model": r.get("model"), "choices": [], "provenance": r.get("provenance")}
    )
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return Response(
        body,
        media_type="text/event-stream",
        headers={**headers, "cache-control": "no-cache"},
    )
