"""Every table, imported in one place for Alembic autogenerate and for tests."""

from service.db.base import Base
from service.lineage.models import AuditRecord
from service.tenancy.models import ApiKey, Tenant

__all__ = ["ApiKey", "AuditRecord", "Base", "Tenant"]
