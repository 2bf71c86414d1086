"""consumer_positions: how far each consumer group has applied each partition

A database restored from a backup is older than the consumer groups' committed offsets in
Kafka: its consumers skipped the events since for good (reports never decided, acknowledgements
lost). With the positions in the database, start-up moves the groups back to them.

Revision ID: b8e3f0a6c9d2
Revises: a9d4c2e8f1b7
Create Date: 2026-11-30 21:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'b8e3f0a6c9d2'
down_revision = 'a9d4c2e8f1b7'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'consumer_positions',
        sa.Column('group_id', sa.String(length=200), nullable=False),
        sa.Column('topic', sa.String(length=200), nullable=False),
        sa.Column('partition', sa.Integer(), nullable=False),
        sa.Column('next_offset', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('group_id', 'topic', 'partition', name=op.f('pk_consumer_positions')),
    )


def downgrade() -> None:
    op.drop_table('consumer_positions')
