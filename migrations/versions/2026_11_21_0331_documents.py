"""Document registry: documents, versions, supersessions and chunks (append-only on PostgreSQL:
a chunk's text is evidence of what a model was shown); retrievals gain the version, the chunk's
text hash, whether the version was superseded at answer time, and what an external RAG app
reported.

Revision ID: 0003_documents
Revises: 0003_model_lineage
Create Date: 2026-11-21 03:31:26.608387
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003_documents'
down_revision: str | None = '0003_model_lineage'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Same rule as 0002's audit tables (its provenant_reject_change() function): no UPDATE, DELETE or
# TRUNCATE. Supersession is an inserted fact (document_supersessions), never an update.
APPEND_ONLY = ("documents", "document_versions", "document_supersessions", "chunks")


def _create_triggers() -> None:
    for table in APPEND_ONLY:
        for name, when in (("no_update", "UPDATE"), ("no_delete", "DELETE")):
            op.execute(
                f"CREATE TRIGGER {table}_{name} BEFORE {when} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION provenant_reject_change()"
            )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION provenant_reject_change()"
        )


def _drop_triggers() -> None:
    for table in APPEND_ONLY:
        for name in ("no_delete", "no_truncate", "no_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_{name} ON {table}")


def upgrade() -> None:
    op.create_table('documents',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('collection', sa.String(length=64), nullable=False),
    sa.Column('source_uri', sa.String(length=1000), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_documents_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_documents')),
    sa.UniqueConstraint('tenant_id', 'collection', 'source_uri', name='uq_documents_tenant_collection_uri')
    )
    op.create_table('document_versions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('document_id', sa.Uuid(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('media_type', sa.String(length=100), nullable=False),
    sa.Column('filename', sa.String(length=500), nullable=True),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('pages', sa.Integer(), nullable=True),
    sa.Column('chunk_count', sa.Integer(), nullable=False),
    sa.Column('metadata', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('ingested_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_document_versions_document_id_documents')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_document_versions')),
    sa.UniqueConstraint('document_id', 'version', name='uq_document_versions_document_version')
    )
    op.create_table('chunks',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('version_id', sa.Uuid(), nullable=False),
    sa.Column('ordinal', sa.Integer(), nullable=False),
    sa.Column('page', sa.Integer(), nullable=True),
    sa.Column('char_start', sa.Integer(), nullable=False),
    sa.Column('char_end', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('text_sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_chunks_tenant_id_tenants')),
    sa.ForeignKeyConstraint(['version_id'], ['document_versions.id'], name=op.f('fk_chunks_version_id_document_versions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chunks')),
    sa.UniqueConstraint('version_id', 'ordinal', name='uq_chunks_version_ordinal')
    )
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.create_index('ix_chunks_tenant_text_sha256', ['tenant_id', 'text_sha256'], unique=False)

    op.create_table('document_supersessions',
    sa.Column('version_id', sa.Uuid(), nullable=False),
    sa.Column('superseded_by', sa.Uuid(), nullable=False),
    sa.Column('superseded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['superseded_by'], ['document_versions.id'], name=op.f('fk_document_supersessions_superseded_by_document_versions')),
    sa.ForeignKeyConstraint(['version_id'], ['document_versions.id'], name=op.f('fk_document_supersessions_version_id_document_versions')),
    sa.PrimaryKeyConstraint('version_id', name=op.f('pk_document_supersessions'))
    )
    with op.batch_alter_table('retrievals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('document_version_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('chunk_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('superseded', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('reported', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_retrievals_chunk_id_chunks'), 'chunks', ['chunk_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_retrievals_document_version_id_document_versions'), 'document_versions', ['document_version_id'], ['id'])

    if op.get_bind().dialect.name == "postgresql":
        _create_triggers()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _drop_triggers()
    with op.batch_alter_table('retrievals', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_retrievals_document_version_id_document_versions'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_retrievals_chunk_id_chunks'), type_='foreignkey')
        batch_op.drop_column('reported')
        batch_op.drop_column('superseded')
        batch_op.drop_column('chunk_sha256')
        batch_op.drop_column('document_version_id')

    op.drop_table('document_supersessions')
    with op.batch_alter_table('chunks', schema=None) as batch_op:
        batch_op.drop_index('ix_chunks_tenant_text_sha256')

    op.drop_table('chunks')
    op.drop_table('document_versions')
    op.drop_table('documents')
