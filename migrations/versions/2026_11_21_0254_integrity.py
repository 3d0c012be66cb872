"""Integrity log (entries, tree nodes, checkpoints, signing keys, pending), lineage rows
(retrievals, policy decisions, model snapshots, admin events), salted content hashes; on
PostgreSQL, triggers that keep the audit tables append-only.

Revision ID: 0002_integrity
Revises: 0001_foundation
Create Date: 2026-11-21 02:54:10.824754
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002_integrity'
down_revision: str | None = '0001_foundation'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Append-only on PostgreSQL: these tables reject UPDATE, DELETE and TRUNCATE. The one exception is
# the erasure/retention path on audit_records, which may only set content columns (and the salt)
# to NULL; every other column must stay as it was. A superuser can still disable triggers, which is
# why the Merkle log exists: `provenant verify` detects what such a user changes.
APPEND_ONLY = (
    "audit_records",
    "retrievals",
    "policy_decisions",
    "admin_events",
    "model_snapshots",
    "log_entries",
    "tree_nodes",
    "checkpoints",
    "signing_keys",
)
CONTENT = ("prompt", "prompt_sha256", "answer", "answer_sha256", "choices", "content_salt")

REJECT_FN = """
CREATE FUNCTION provenant_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'provenant: % on % is not allowed: the audit log is append-only',
    TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
"""

ERASE_FN = """
CREATE FUNCTION provenant_audit_record_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF (to_jsonb(NEW) - %(cols)s) IS DISTINCT FROM (to_jsonb(OLD) - %(cols)s) THEN
    RAISE EXCEPTION 'provenant: audit records are append-only; only content may be erased'
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF %(only_nulls)s THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'provenant: audit records are append-only; erasure may only set content to NULL'
    USING ERRCODE = 'insufficient_privilege';
END $$;
""" % {
    "cols": "ARRAY[" + ", ".join(f"'{c}'" for c in CONTENT) + "]",
    "only_nulls": " AND ".join(
        f"(NEW.{c} IS NULL OR NEW.{c} IS NOT DISTINCT FROM OLD.{c})" for c in CONTENT
    ),
}


def _create_triggers() -> None:
    op.execute(REJECT_FN)
    op.execute(ERASE_FN)
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION provenant_reject_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION provenant_reject_change()"
        )
        fn = (
            "provenant_audit_record_update"
            if table == "audit_records"
            else "provenant_reject_change"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}()"
        )


def _drop_triggers() -> None:
    for table in APPEND_ONLY:
        for name in ("no_delete", "no_truncate", "no_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_{name} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS provenant_audit_record_update()")
    op.execute("DROP FUNCTION IF EXISTS provenant_reject_change()")


def upgrade() -> None:
    op.create_table('checkpoints',
    sa.Column('tree_size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('root_sha256', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tree_size', name=op.f('pk_checkpoints'))
    )
    op.create_table('log_entries',
    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('entry_id', sa.Uuid(), nullable=False),
    sa.Column('leaf_sha256', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('idx', name=op.f('pk_log_entries')),
    sa.UniqueConstraint('entry_id', name=op.f('uq_log_entries_entry_id'))
    )
    op.create_table('log_pending',
    sa.Column('entry_id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('leaf_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('entry_id', name=op.f('pk_log_pending'))
    )
    op.create_table('model_snapshots',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('snapshot_sha256', sa.String(length=64), nullable=False),
    sa.Column('registry_uri', sa.String(length=500), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('alias', sa.String(length=200), nullable=True),
    sa.Column('run_id', sa.String(length=64), nullable=True),
    sa.Column('content', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_snapshots')),
    sa.UniqueConstraint('snapshot_sha256', name=op.f('uq_model_snapshots_snapshot_sha256'))
    )
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys'))
    )
    op.create_table('tree_nodes',
    sa.Column('level', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('level', 'idx', name=op.f('pk_tree_nodes'))
    )
    op.create_table('admin_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=500), nullable=True),
    sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('leaf_sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_admin_events_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_events'))
    )
    with op.batch_alter_table('admin_events', schema=None) as batch_op:
        batch_op.create_index('ix_admin_events_tenant_created', ['tenant_id', 'created_at'], unique=False)

    op.create_table('policy_decisions',
    sa.Column('record_id', sa.Uuid(), nullable=False),
    sa.Column('policy_id', sa.String(length=200), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('policy_sha256', sa.String(length=64), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['record_id'], ['audit_records.id'], name=op.f('fk_policy_decisions_record_id_audit_records')),
    sa.PrimaryKeyConstraint('record_id', 'policy_id', 'stage', name=op.f('pk_policy_decisions'))
    )
    op.create_table('retrievals',
    sa.Column('record_id', sa.Uuid(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sa.Uuid(), nullable=True),
    sa.Column('source_ref', sa.String(length=500), nullable=True),
    sa.Column('score', sa.Double(), nullable=True),
    sa.Column('cited', sa.Boolean(), nullable=False),
    sa.Column('verified', sa.Boolean(), nullable=True),
    sa.ForeignKeyConstraint(['record_id'], ['audit_records.id'], name=op.f('fk_retrievals_record_id_audit_records')),
    sa.PrimaryKeyConstraint('record_id', 'rank', name=op.f('pk_retrievals'))
    )
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_salt', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('prompt_salted_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('answer_salted_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('choices_salted_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('model_snapshot_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('policy_bundle_sha256', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('leaf_sha256', sa.String(length=64), nullable=True))
        batch_op.alter_column('prompt_sha256',
               existing_type=sa.VARCHAR(length=64),
               nullable=True)
        batch_op.alter_column('answer_sha256',
               existing_type=sa.VARCHAR(length=64),
               nullable=True)
        batch_op.create_foreign_key(batch_op.f('fk_audit_records_model_snapshot_id_model_snapshots'), 'model_snapshots', ['model_snapshot_id'], ['id'])

    if op.get_bind().dialect.name == "postgresql":
        _create_triggers()



def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _drop_triggers()
    with op.batch_alter_table('audit_records', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_audit_records_model_snapshot_id_model_snapshots'), type_='foreignkey')
        batch_op.alter_column('answer_sha256',
               existing_type=sa.VARCHAR(length=64),
               nullable=False)
        batch_op.alter_column('prompt_sha256',
               existing_type=sa.VARCHAR(length=64),
               nullable=False)
        batch_op.drop_column('leaf_sha256')
        batch_op.drop_column('policy_bundle_sha256')
        batch_op.drop_column('model_snapshot_id')
        batch_op.drop_column('choices_salted_sha256')
        batch_op.drop_column('answer_salted_sha256')
        batch_op.drop_column('prompt_salted_sha256')
        batch_op.drop_column('content_salt')

    op.drop_table('retrievals')
    op.drop_table('policy_decisions')
    with op.batch_alter_table('admin_events', schema=None) as batch_op:
        batch_op.drop_index('ix_admin_events_tenant_created')

    op.drop_table('admin_events')
    op.drop_table('tree_nodes')
    op.drop_table('signing_keys')
    op.drop_table('model_snapshots')
    op.drop_table('log_pending')
    op.drop_table('log_entries')
    op.drop_table('checkpoints')
