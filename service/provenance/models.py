"""Model snapshots: what the registry said about the model that served an answer, copied at
answer time (DESIGN §2 "snapshot, not reference"). The MLflow issue fills them; the integrity
log already covers them through ``snapshot_sha256``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from service.db.base import Base, PortableJSON, UTCDateTime, utcnow


class ModelSnapshot(Base):
    __tablename__ = "model_snapshots"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # SHA-256 of the RFC 8785 canonical JSON of ``content``: deduplicates and seals the snapshot
    snapshot_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    registry_uri: Mapped[str | None] = mapped_column(String(500))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str | None] = mapped_column(String(64))
    alias: Mapped[str | None] = mapped_column(String(200))
    run_id: Mapped[str | None] = mapped_column(String(64))
    # everything resolved (version, run, datasets, base model, adapter), as one JSON document
    content: Mapped[dict[str, Any]] = mapped_column(PortableJSON)
    resolved_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
