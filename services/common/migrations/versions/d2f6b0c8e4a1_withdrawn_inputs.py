"""withdrawn_inputs: inputs refused with 503 whose event may be on Kafka all the same

Their rows stay unpublished until the event turns up (the input is adopted) or the retention
purge removes them; before, they were deleted at once, and an event the broker had taken without
acknowledging it left a case with no report behind it.

Revision ID: d2f6b0c8e4a1
Revises: a185f167c733
Create Date: 2026-11-29 23:00:00
"""
from alembic import op
import sqlalchemy as sa
import services.common.db


revision = 'd2f6b0c8e4a1'
down_revision = 'a185f167c733'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('withdrawn_inputs',
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('case_id', sa.String(length=40), nullable=False),
    sa.Column('user_id', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=True),
    sa.Column('withdrawn_at', services.common.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_withdrawn_inputs'))
    )
    with op.batch_alter_table('withdrawn_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_withdrawn_inputs_withdrawn_at'), ['withdrawn_at'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('withdrawn_inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_withdrawn_inputs_withdrawn_at'))
    op.drop_table('withdrawn_inputs')
