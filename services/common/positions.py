"""How far each consumer group has applied each partition, kept in the database.

Kafka keeps a group's committed offsets; the database keeps what the group applied. The two
agree until the database is restored from a backup: Kafka's offsets are then past events the
restored database never saw, and the consumers skipped them for good (reports never decided,
acknowledgements lost, cases answering 404), saying nothing. So when a partition is assigned
to a consumer, a committed offset past the database's position is moved back to it, and the
events since are read again; each consumer skips what it had applied (processed_events).

A position is written after its batch is applied, so it is never ahead of the database: a
crash in between reads the batch again, which is harmless. The same holds for a process of an
older release, which commits offsets without writing positions (a rolling upgrade): its
partitions are read again from the last position written, and nothing is refused.
"""

import asyncio

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from sqlalchemy import BigInteger, Integer, String, case, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from services.common import backoff
from services.common.db import Base, Database, database_fault

log = structlog.get_logger("beacon")


class ConsumerPosition(Base):
    __tablename__ = "consumer_positions"
    group_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(String(200), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)  # the first offset not applied


_TABLE = ConsumerPosition.__table__


def _upsert(insert, forward_only: bool):
    stmt = insert(_TABLE)
    new = stmt.excluded.next_offset
    return stmt.on_conflict_do_update(
        index_elements=["group_id", "topic", "partition"],
        set_={"next_offset": case((new > _TABLE.c.next_offset, new), else_=_TABLE.c.next_offset)
              if forward_only else new})


# After a batch, never back: two consumers may both hold a partition for a moment in a
# rebalance. At an assignment, to what this consumer now holds alone.
_SAVE = {"postgresql": _upsert(pg_insert, True), "sqlite": _upsert(sqlite_insert, True)}
_SET = {"postgresql": _upsert(pg_insert, False), "sqlite": _upsert(sqlite_insert, False)}


async def save(db: Database, group_id: str, records: list) -> None:
    """Record that `group_id` has applied these Kafka records (and every one before them)."""
    nexts: dict[tuple[str, int], int] = {}
    for r in records:
        nexts[(r.topic, r.partition)] = max(nexts.get((r.topic, r.partition), 0), r.offset + 1)
    await _write(db, _SAVE, group_id, nexts)


async def _write(db: Database, statements: dict, group_id: str,
                 nexts: dict[tuple[str, int], int]) -> None:
    if not nexts:
        return
    async with db.writes() as session, session.begin():
        await session.execute(statements[session.get_bind().dialect.name], [
            {"group_id": group_id, "topic": t, "partition": p, "next_offset": n}
            for (t, p), n in sorted(nexts.items())])


class Rewind(ConsumerRebalanceListener):
    """At each assignment: a partition committed past the database's position is read again
    from that position; one the database has no position for gets one (the committed offset:
    a new database, or one from before positions were kept); one committed below it (a topic
    made again, or a crash between the write and the commit) is set down to it."""

    def __init__(self, db: Database, group_id: str):
        self.db, self.group_id = db, group_id
        self.subscriber = None  # FastStream's, whose aiokafka consumer seeks

    async def on_partitions_revoked(self, revoked) -> None:
        pass

    async def on_partitions_assigned(self, assigned) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        if consumer is None or not assigned:
            return
        attempt = 0
        while True:
            try:
                return await self._rewind(consumer, assigned)
            except Exception as exc:
                # aiokafka's flag: a stop waits for this listener, which would hold it 20 s.
                if not database_fault(exc) or consumer._closed:
                    raise
                # Gone on from the committed offsets, a restored database's events would be
                # skipped for good: wait for it (nothing is fetched meanwhile).
                attempt += 1
                log.warning("positions_waiting_for_database", group=self.group_id,
                            attempt=attempt, error=type(exc).__name__)
                await asyncio.sleep(backoff.exponential(attempt, 0.5, 5.0))

    async def _rewind(self, consumer, assigned) -> None:
        async with self.db.reads() as session:
            applied = {(r.topic, r.partition): r.next_offset
                       for r in (await session.scalars(select(ConsumerPosition).where(
                           ConsumerPosition.group_id == self.group_id,
                           ConsumerPosition.topic.in_({tp.topic for tp in assigned})))).all()}
        behind: dict[TopicPartition, tuple[int, int]] = {}
        reset: dict[tuple[str, int], int] = {}
        for tp in assigned:
            at, committed = applied.get((tp.topic, tp.partition)), await consumer.committed(tp)
            if at is not None and committed is not None and at < committed:
                behind[tp] = (at, committed)
            elif at is None or (committed is not None and committed < at):
                reset[(tp.topic, tp.partition)] = committed or 0
        await _write(self.db, _SET, self.group_id, reset)
        if not behind:
            return
        start = await consumer.beginning_offsets(list(behind))
        for tp, (at, _) in behind.items():
            consumer.seek(tp, max(at, start[tp]))
        log.warning("database_behind_event_log", group=self.group_id,
                    events=sum(c - a for a, c in behind.values()),
                    partitions={f"{tp.topic}[{tp.partition}]": [a, c]
                                for tp, (a, c) in sorted(behind.items())},
                    why="the database is older than the group's offsets (restored from a "
                        "backup?): reading those events again")
        gone = {f"{tp.topic}[{tp.partition}]": start[tp] - a
                for tp, (a, _) in behind.items() if start[tp] > a}
        if gone:
            log.error("database_behind_retention", group=self.group_id, events_gone=gone,
                      why="retention has removed events the database never applied: they "
                          "cannot be read again")
