"""API shapes of model lineage: snapshots and how a tenant's answers used them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class DatasetOut(BaseModel):
    name: str | None
    digest: str | None
    source: str | None


class ModelLineageOut(BaseModel):
    """``provenance.model``'s registry fields, as of the snapshot."""

    registry: str | None
    tracking_uri: str | None
    name: str | None
    version: str | None
    alias: str | None
    run_id: str | None
    source: str | None
    base_model: str | None
    adapter: str | None
    adapter_digest: str | None
    validation_status: str | None
    datasets: list[DatasetOut]
    snapshot_id: uuid.UUID
    snapshot_sha256: str


class ModelUsageOut(BaseModel):
    """A snapshot that served the caller's tenant, with how it was used."""

    id: uuid.UUID
    snapshot_sha256: str
    registry_uri: str | None
    name: str
    version: str | None
    alias: str | None
    run_id: str | None
    resolved_at: datetime
    lineage: ModelLineageOut
    records: int
    answers: int
    stale_records: int
    first_used_at: datetime
    last_used_at: datetime


class ModelSnapshotOut(ModelUsageOut):
    """One snapshot in full: everything the registry said when it was taken."""

    content: dict[str, Any]


class ModelUsagePage(BaseModel):
    object: str = "list"
    data: list[ModelUsageOut]
    has_more: bool
