"""cases.child_ages: the ages a case's reports gave, for duplicate matching

A report about an unnamed 12-year-old joined the open case of a named 5-year-old in the same
commune and category, so the new child got no alert and no emergency clock of its own. Cases
from before this revision have none (NULL): matched by place, kind and time, as before.

Revision ID: f3a8d1c6b2e9
Revises: e7b2c9d4f1a3
Create Date: 2026-11-30 09:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'f3a8d1c6b2e9'
down_revision = 'e7b2c9d4f1a3'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('child_ages', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('child_ages')
