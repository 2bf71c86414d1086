"""deliveries: indexes in the order the notifier claims and bundles

The claim reads due rows of one status by severity, then due time; with the old (status,
next_at) index SQLite sorted every due row at each claim, which grows with a backlog (a
receiver outage). A recipient's pending reminders are found by (authority_id, status).

Revision ID: 296c5e5a7b36
Revises: 7a3e9c41d2b8
Create Date: 2026-11-29 15:12:01
"""
from alembic import op


revision = '296c5e5a7b36'
down_revision = '7a3e9c41d2b8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_due')
        batch_op.create_index('ix_deliveries_claim', ['status', 'severity', 'next_at'], unique=False)
        batch_op.create_index('ix_deliveries_recipient', ['authority_id', 'status', 'created_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_recipient')
        batch_op.drop_index('ix_deliveries_claim')
        batch_op.create_index('ix_deliveries_due', ['status', 'next_at'], unique=False)
