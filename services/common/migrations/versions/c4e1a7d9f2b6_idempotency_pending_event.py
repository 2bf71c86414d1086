"""idempotency_keys.event: a follow-up's event until it is published

A retry with the same Idempotency-Key, or the start-up sweep, publishes it again (same event id)
when the request died between storing the key and publishing; cleared once it is on Kafka.

Revision ID: c4e1a7d9f2b6
Revises: 85809b449c5b
Create Date: 2026-11-29 21:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'c4e1a7d9f2b6'
down_revision = '85809b449c5b'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event', sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_column('event')
