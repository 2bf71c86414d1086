"""case_authorities.awaiting and ack_due: whether each authority still owes its acknowledgement

An authority asking for its cases `?acknowledged=false` got the cases the whole case had not
acknowledged, its own answered ones among them; and nobody could list the cases past an act
deadline. The targets' JSON reads differently on SQLite and PostgreSQL, so the case list asks
these two columns. Filled here from each case's targets, as the read model now keeps them.

Revision ID: c7d2e5f8a1b3
Revises: b8e3f0a6c9d2
Create Date: 2026-11-30 23:50:00
"""
from datetime import datetime

from alembic import op
import sqlalchemy as sa

from services.common.db import UTCDateTime


revision = 'c7d2e5f8a1b3'
down_revision = 'b8e3f0a6c9d2'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('case_authorities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('awaiting', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('ack_due', UTCDateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_case_authorities_ack_due'), ['ack_due'], unique=False)
    # Built here, not imported: a migration must not change when the model does later.
    cases = sa.table('cases', sa.column('case_id', sa.String), sa.column('targets', sa.JSON))
    rows = sa.table('case_authorities', sa.column('case_id', sa.String),
                    sa.column('authority_id', sa.String), sa.column('awaiting', sa.Boolean),
                    sa.column('ack_due', UTCDateTime()))
    bind = op.get_bind()
    for case_id, targets in bind.execute(sa.select(cases.c.case_id, cases.c.targets)):
        for t in targets or ():
            awaiting = (t.get("role") == "act" and not t.get("transferred_to")
                        and not t.get("released") and not t.get("acknowledged_at"))
            if not awaiting:
                continue
            due = datetime.fromisoformat(t["ack_due"]) if t.get("ack_due") else None
            bind.execute(rows.update().where(
                rows.c.case_id == case_id, rows.c.authority_id == t["authority_id"],
            ).values(awaiting=True, ack_due=due))


def downgrade() -> None:
    with op.batch_alter_table('case_authorities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_authorities_ack_due'))
        batch_op.drop_column('ack_due')
        batch_op.drop_column('awaiting')
