"""Idempotency: a client's Idempotency-Key per tenant, reserved for one answer before the
upstream is asked (the primary key settles concurrent duplicates), and the answer a retry is
given back, written with its record (content: erased with it).

Revision ID: 0004_idempotency
Revises: 0003_documents
Create Date: 2026-11-21 07:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004_idempotency'
down_revision: str | None = '0003_documents'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('idempotency_keys',
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_sha256', sa.String(length=64), nullable=False),
    sa.Column('record_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_idempotency_keys_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', 'key', name=op.f('pk_idempotency_keys'))
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_keys_expires_at'), ['expires_at'], unique=False)

    op.create_table('idempotent_replays',
    sa.Column('record_id', sa.Uuid(), nullable=False),
    sa.Column('stream', sa.Boolean(), nullable=False),
    sa.Column('response', sa.JSON().with_variant(postgresql.JSONB(), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['record_id'], ['audit_records.id'], name=op.f('fk_idempotent_replays_record_id_audit_records')),
    sa.PrimaryKeyConstraint('record_id', name=op.f('pk_idempotent_replays'))
    )


def downgrade() -> None:
    op.drop_table('idempotent_replays')
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_keys_expires_at'))
    op.drop_table('idempotency_keys')
