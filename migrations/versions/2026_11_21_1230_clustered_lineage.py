"""SQLite: the lineage rows of an answer (retrievals, policy decisions) stored WITHOUT ROWID, in
their primary key's B-tree (record, rank / policy, stage), instead of a rowid table beside an
index of that key: one B-tree insert per row instead of two and about a third fewer pages
written per commit. PostgreSQL is unchanged.

Revision ID: 0005_clustered_lineage
Revises: 0004_idempotency
Create Date: 2026-11-21 12:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0005_clustered_lineage'
down_revision: str | None = '0004_idempotency'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ('retrievals', 'policy_decisions')


def _rebuild(with_rowid: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        # "move and copy": a new table, the rows copied, the old one dropped, the new renamed
        with op.batch_alter_table(
            table, recreate='always', table_kwargs={'sqlite_with_rowid': with_rowid}
        ):
            pass


def upgrade() -> None:
    _rebuild(with_rowid=False)


def downgrade() -> None:
    _rebuild(with_rowid=True)
