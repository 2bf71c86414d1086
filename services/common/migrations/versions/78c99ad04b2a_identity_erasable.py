"""reports.identity may be empty: retention erases a closed case's identity

Revision ID: 78c99ad04b2a
Revises: 296c5e5a7b36
Create Date: 2026-11-29 15:37:53
"""
from alembic import op
import sqlalchemy as sa


revision = '78c99ad04b2a'
down_revision = '296c5e5a7b36'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.alter_column('identity', existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    # Refused by the database while any report's identity has been erased.
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.alter_column('identity', existing_type=sa.LargeBinary(), nullable=False)
