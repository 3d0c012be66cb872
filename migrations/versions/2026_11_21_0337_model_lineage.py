"""Model lineage: audit_records.lineage_stale (a registry-linked answer served while the registry
could not confirm its snapshot) and an index for per-snapshot usage within a tenant.

model_snapshots itself (and its append-only trigger on PostgreSQL) came with 0002_integrity.

Revision ID: 0003_model_lineage
Revises: 0003_privacy
Create Date: 2026-11-21 03:37:37.576536
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003_model_lineage'
down_revision: str | None = '0003_privacy'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lineage_stale', sa.Boolean(), nullable=True))
        batch_op.create_index('ix_audit_records_tenant_snapshot', ['tenant_id', 'model_snapshot_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_records_tenant_snapshot')
        batch_op.drop_column('lineage_stale')
