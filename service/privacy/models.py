"""Legal holds: what retention and erasure must leave alone until released."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, UTCDateTime


class HoldScope(StrEnum):
    subject = "subject"  # every record of one end user
    record = "record"  # one record
    route = "route"  # every record of one route


class LegalHold(Base):
    """A hold on a tenant's records. Placing and releasing one are admin events in the log."""

    __tablename__ = "legal_holds"
    __table_args__ = (Index("ix_legal_holds_tenant_active", "tenant_id", "released_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)  # UUIDv7
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id"))
    scope: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(String(256))
    record_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    route: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(String(200))
    release_reason: Mapped[str | None] = mapped_column(Text)
