"""add_bulk (services/common/db.py): insert-only rows written as one INSERT per table. They must
be seen by the transaction's own queries, written at commit in the order added, and dropped with
a rollback."""

import pytest
from sqlalchemy import func, select

from services.common.db import add_bulk, utcnow
from services.common.outbox import OutboxRow
from services.escalation.store import EscalationTarget


@pytest.fixture
def db(sqlite_db):
    return sqlite_db


def outbox_row(session, n: int) -> None:
    add_bulk(session, OutboxRow, service="test", topic="t", event_id=f"e-{n}", case_id="C-1",
             payload="{}", created_at=utcnow())


async def test_rows_are_seen_by_the_next_query_and_kept_in_order(db):
    async with db.writes() as session, session.begin():
        for n in range(5):
            outbox_row(session, n)
        assert await session.scalar(select(func.count()).select_from(OutboxRow)) == 5
        for n in range(5, 8):
            outbox_row(session, n)
    async with db.reads() as session:
        ids = (await session.scalars(select(OutboxRow.event_id).order_by(OutboxRow.id))).all()
    assert ids == [f"e-{n}" for n in range(8)]  # the relay publishes in this order


async def test_column_defaults_apply_to_values_not_given(db):
    async with db.writes() as session, session.begin():
        add_bulk(session, EscalationTarget, case_id="C-1", authority_id="a", tier="commune",
                 agency="police", role="act", added_at=utcnow())
    async with db.reads() as session:
        row = await session.get(EscalationTarget, ("C-1", "a"))
    assert (row.origin, row.working_days, row.acked_at) == ("decision", False, None)


async def test_a_rollback_drops_them(db):
    async with db.writes() as session:
        await session.begin()
        outbox_row(session, 1)
        await session.rollback()  # the handler failed; the session goes on
        async with session.begin():
            outbox_row(session, 2)
    async with db.reads() as session:
        ids = (await session.scalars(select(OutboxRow.event_id))).all()
    assert ids == ["e-2"]
