"""cases.settings: the settings a case's reports gave, for duplicate matching

A call about an unnamed child beaten at home joined the open kindergarten case of the same
commune and category, so that child got no alert and no emergency clock of its own. Cases from
before this revision have none (NULL): matched whatever the setting, as before.

Revision ID: a9d4c2e8f1b7
Revises: f3a8d1c6b2e9
Create Date: 2026-11-30 18:10:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'a9d4c2e8f1b7'
down_revision = 'f3a8d1c6b2e9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settings', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('settings')
