"""case_categories: every category a case's reports gave

`?category=SEX_ABUSE` asked cases.category, the first report's only: a case opened as neglect
that took a linked report of sexual abuse was not found. Filled here from each case's first
category and the reports on its timeline (each entry has carried its category from the start).

Revision ID: e3b7a1c5d9f2
Revises: a4c8e2f6b1d9
Create Date: 2026-12-01 11:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'e3b7a1c5d9f2'
down_revision = 'a4c8e2f6b1d9'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('case_categories',
    sa.Column('case_id', sa.String(length=40), nullable=False),
    sa.Column('category', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('case_id', 'category', name=op.f('pk_case_categories'))
    )
    with op.batch_alter_table('case_categories', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_categories_category'), ['category'], unique=False)
    # Built here, not imported: a migration must not change when the model does later.
    cases = sa.table('cases', sa.column('case_id', sa.String), sa.column('category', sa.String))
    timeline = sa.table('timeline', sa.column('case_id', sa.String), sa.column('kind', sa.String),
                        sa.column('detail', sa.JSON))
    rows = sa.table('case_categories', sa.column('case_id', sa.String),
                    sa.column('category', sa.String))
    bind = op.get_bind()
    found = set(bind.execute(sa.select(cases.c.case_id, cases.c.category)).all())
    for case_id, detail in bind.execute(sa.select(timeline.c.case_id, timeline.c.detail).where(
            timeline.c.kind == 'report_received')):
        if (detail or {}).get('category'):
            found.add((case_id, detail['category']))
    pairs = [{'case_id': c, 'category': k} for c, k in sorted(found)]
    for i in range(0, len(pairs), 1000):
        bind.execute(rows.insert(), pairs[i:i + 1000])


def downgrade() -> None:
    with op.batch_alter_table('case_categories', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_categories_category'))
    op.drop_table('case_categories')
