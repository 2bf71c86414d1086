"""readmodel_parked: case events that arrived before their case's report

The read model consumes the inputs, cases, alerts and deliveries topics together; a decision
read before its report was claimed and dropped, and its case kept no severity or targets.

Revision ID: e7b2c9d4f1a3
Revises: d2f6b0c8e4a1
Create Date: 2026-11-30 06:00:00
"""
from alembic import op
import sqlalchemy as sa
import services.common.db


revision = 'e7b2c9d4f1a3'
down_revision = 'd2f6b0c8e4a1'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('readmodel_parked',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('case_id', sa.String(length=40), nullable=False),
    sa.Column('envelope', sa.String(), nullable=False),
    sa.Column('parked_at', services.common.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_readmodel_parked'))
    )
    with op.batch_alter_table('readmodel_parked', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_readmodel_parked_case_id'), ['case_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('readmodel_parked', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_readmodel_parked_case_id'))
    op.drop_table('readmodel_parked')
