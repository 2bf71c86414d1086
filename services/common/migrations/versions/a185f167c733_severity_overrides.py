"""severity_overrides: a supervisor's override, its reason sealed

The reason is free text that may name people: it stays off Kafka (the CaseUpdated event says only
that one was given) and is kept here, Fernet-sealed like a report's identity. The row holds its
event until it is published, as a report's row does.

Revision ID: a185f167c733
Revises: c4e1a7d9f2b6
Create Date: 2026-11-29 22:30:00
"""
from alembic import op
import sqlalchemy as sa
import services.common.db


revision = 'a185f167c733'
down_revision = 'c4e1a7d9f2b6'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('severity_overrides',
    sa.Column('update_id', sa.String(length=40), nullable=False),
    sa.Column('case_id', sa.String(length=40), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(), nullable=False),
    sa.Column('published', sa.Boolean(), nullable=False),
    sa.Column('severity', sa.String(length=4), nullable=False),
    sa.Column('reason', sa.LargeBinary(), nullable=True),
    sa.Column('by_user', sa.String(length=64), nullable=False),
    sa.Column('created_at', services.common.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('update_id', name=op.f('pk_severity_overrides')),
    sa.UniqueConstraint('event_id', name=op.f('uq_severity_overrides_event_id'))
    )
    with op.batch_alter_table('severity_overrides', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_severity_overrides_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_severity_overrides_published'), ['published'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('severity_overrides', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_severity_overrides_published'))
        batch_op.drop_index(batch_op.f('ix_severity_overrides_case_id'))
    op.drop_table('severity_overrides')
