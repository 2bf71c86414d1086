"""GroupCommit (services/common/group_commit.py): concurrent small writes share a transaction,
a failing one fails only its caller, and a caller that gives up does not lose the others."""

import asyncio

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from services.common.db import ProcessedEvent, utcnow
from services.common.group_commit import GroupCommit


@pytest.fixture
def db(sqlite_db):
    return sqlite_db


def claim(event_id: str):
    async def work(session):
        session.add(ProcessedEvent(consumer="test", event_id=event_id, processed_at=utcnow()))
        await session.flush()
        return event_id
    return work


async def written(db) -> list[str]:
    async with db.reads() as session:
        return sorted((await session.scalars(select(ProcessedEvent.event_id))).all())


async def test_concurrent_writes_share_a_transaction(db):
    commits = 0

    def count(_conn):
        nonlocal commits
        commits += 1

    event.listen(db.engine.sync_engine, "commit", count)
    group = GroupCommit(db.writes)
    results = await asyncio.gather(*(group(claim(f"e-{n}")) for n in range(10)))
    assert results == [f"e-{n}" for n in range(10)]
    assert await written(db) == sorted(f"e-{n}" for n in range(10))
    assert commits <= 2  # not ten


async def test_a_failing_write_fails_only_its_caller(db):
    group = GroupCommit(db.writes)
    await group(claim("taken"))
    results = await asyncio.gather(group(claim("a")), group(claim("taken")), group(claim("b")),
                                   return_exceptions=True)
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], IntegrityError)
    assert await written(db) == ["a", "b", "taken"]


async def test_a_caller_that_gives_up_does_not_lose_the_others(db):
    group = GroupCommit(db.writes, gather_s=0.05)
    leader = asyncio.create_task(group(claim("leader")))
    await asyncio.sleep(0)  # the leader holds the lock and gathers
    others = [asyncio.create_task(group(claim(f"o-{n}"))) for n in range(3)]
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await asyncio.wait_for(asyncio.gather(*others), 5) == ["o-0", "o-1", "o-2"]
    assert set(await written(db)) >= {"o-0", "o-1", "o-2"}



async def test_a_batch_writer_gets_the_group_at_once_and_failures_alone(db):
    calls: list[list[str]] = []

    async def write(session, event_ids: list[str]) -> list[str]:
        calls.append(list(event_ids))
        for event_id in event_ids:
            session.add(ProcessedEvent(consumer="test", event_id=event_id, processed_at=utcnow()))
        await session.flush()
        return [e.upper() for e in event_ids]

    group = GroupCommit(db.writes, gather_s=0.01, write=write)
    await group("taken")
    results = await asyncio.gather(*(group(e) for e in ("a", "taken", "b")),
                                   return_exceptions=True)
    assert results[0] == "A" and results[2] == "B"
    assert isinstance(results[1], IntegrityError)
    assert calls == [["taken"], ["a", "taken", "b"], ["a"], ["taken"], ["b"]]
    assert await written(db) == ["a", "b", "taken"]
