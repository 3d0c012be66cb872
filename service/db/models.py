"""Every table, imported in one place for Alembic autogenerate and for tests."""

from service.db.base import Base
from service.documents.models import Chunk, Document, DocumentSupersession, DocumentVersion
from service.integrity.models import Checkpoint, LogEntry, LogPending, SigningKey, TreeNode
from service.lineage.models import (
    AdminEvent,
    AuditRecord,
    IdempotencyKey,
    IdempotentReplay,
    PolicyDecision,
    Retrieval,
)
from service.privacy.models import LegalHold
from service.provenance.models import ModelSnapshot
from service.tenancy.models import ApiKey, Tenant

__all__ = [
    "AdminEvent",
    "ApiKey",
    "AuditRecord",
    "Base",
    "Checkpoint",
    "Chunk",
    "Document",
    "DocumentSupersession",
    "DocumentVersion",
    "IdempotencyKey",
    "IdempotentReplay",
    "LegalHold",
    "LogEntry",
    "LogPending",
    "ModelSnapshot",
    "PolicyDecision",
    "Retrieval",
    "SigningKey",
    "Tenant",
    "TreeNode",
]
