"""reports.child_sexes and cases.child_sexes: the sexes a report gave, for duplicate matching

An unnamed girl of 11 joined the open case of a boy of 10 in the same commune and category:
she got no alert and no clock of her own, and her report's identity went to the authority of
his case. Kept in intake's database only, like the names' hashes (never on Kafka). Rows from
before this revision have none (NULL): matched by age, place and time, as before.

Revision ID: a4c8e2f6b1d9
Revises: d9e4f7a2b5c8
Create Date: 2026-12-01 03:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'a4c8e2f6b1d9'
down_revision = 'd9e4f7a2b5c8'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('reports', 'cases'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('child_sexes', sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in ('reports', 'cases'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('child_sexes')
