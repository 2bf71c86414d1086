"""deliveries.bundle: the key of the bundle a row was last leased in

After a crash or an expired lease, the rows of a bundle are claimed again together and sent as
the same message under the same Idempotency-Key, so that the receiver drops the repeat.

Revision ID: b3d5e8f1a2c4
Revises: 78c99ad04b2a
Create Date: 2026-11-30 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'b3d5e8f1a2c4'
down_revision = '78c99ad04b2a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bundle', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('bundle')
