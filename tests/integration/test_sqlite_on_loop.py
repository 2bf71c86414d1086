"""SQLite runs on the event loop (services/common/db.py): another process's write lock must not
stall the loop, and the write must go through once the lock is released."""

import asyncio
import sqlite3

from sqlalchemy import text

from services.common.db import ProcessedEvent, claim_events


async def test_a_locked_database_is_waited_for_without_blocking_the_loop(sqlite_db, tmp_path):
    db = sqlite_db
    other = sqlite3.connect(tmp_path / "beacon.db", isolation_level=None)  # "another process"
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        async def write():
            async with db.writes() as session, session.begin():
                return await claim_events(session, "test", ["e-1", "e-2", "e-1"])

        clock = asyncio.create_task(ticker())
        writer = asyncio.create_task(write())
        await asyncio.sleep(0.5)
        assert not writer.done()  # waiting for the lock...
        assert ticks >= 20  # ...while the loop runs on
        other.execute("COMMIT")
        assert await asyncio.wait_for(writer, 5) == {"e-1", "e-2"}
        clock.cancel()

        async with db.writes() as session, session.begin():  # a repeat claims nothing
            assert await claim_events(session, "test", ["e-2", "e-3"]) == {"e-3"}
        async with db.reads() as session:
            count = await session.scalar(text(f"SELECT count(*) FROM {ProcessedEvent.__tablename__}"))
        assert count == 3
    finally:
        other.close()
