"""esc_milestones.counted_from: when a later input brought the milestone

A milestone a later input brings (the emergency measure, when a danger is reported days after
the first report) counts from that input. The next decision counted it again from the first
receipt, moved its deadline into the past, and it was missed at once. Rows from before this
revision count from the first receipt (NULL), as they did.

Revision ID: d9e4f7a2b5c8
Revises: c7d2e5f8a1b3
Create Date: 2026-12-01 00:20:00
"""
from alembic import op
import sqlalchemy as sa

import services.common.db


revision = 'd9e4f7a2b5c8'
down_revision = 'c7d2e5f8a1b3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('esc_milestones', schema=None) as batch_op:
        batch_op.add_column(sa.Column('counted_from', services.common.db.UTCDateTime(),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('esc_milestones', schema=None) as batch_op:
        batch_op.drop_column('counted_from')
