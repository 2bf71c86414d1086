"""esc_timers, esc_milestone_timers: attempts, the failed fires of a timer put back to retry

A timer whose firing fails is retried later, after 1 min, then twice as long each time up to 1 h;
the count of failures sets the next wait.

Revision ID: 85809b449c5b
Revises: b3d5e8f1a2c4
Create Date: 2026-11-29 20:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '85809b449c5b'
down_revision = 'b3d5e8f1a2c4'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('esc_timers', 'esc_milestone_timers'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0',
                                          nullable=False))


def downgrade() -> None:
    for table in ('esc_timers', 'esc_milestone_timers'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('attempts')
