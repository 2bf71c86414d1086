"""How far each consumer group has applied each partition, kept in the database.

Kafka keeps a group's committed offsets; the database keeps what the group applied. The two
agree until the database is restored from a backup: Kafka's offsets are then past events the
restored database never saw, and the consumers skipped them for good (reports never decided,
acknowledgements lost, cases answering 404), saying nothing. At start, a group whose committed
offsets are ahead of the database's positions is moved back to them, so the events since are
read again; each consumer skips what it had applied (processed_events).

A position is written after its batch is applied, so it is never ahead of the database: a
crash in between reads the batch again, which is harmless.
"""

from types import SimpleNamespace

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CommitFailedError
from sqlalchemy import BigInteger, Integer, String, case, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from services.common.config import ConfigError, Settings
from services.common.db import Base, Database

log = structlog.get_logger("beacon")


class ConsumerPosition(Base):
    __tablename__ = "consumer_positions"
    group_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    topic: Mapped[str] = mapped_column(String(200), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)  # the first offset not applied


_TABLE = ConsumerPosition.__table__


def _upsert(insert):
    stmt = insert(_TABLE)
    # Never back: after a rebalance a consumer may apply again what another had applied.
    return stmt.on_conflict_do_update(
        index_elements=["group_id", "topic", "partition"],
        set_={"next_offset": case((stmt.excluded.next_offset > _TABLE.c.next_offset,
                                   stmt.excluded.next_offset), else_=_TABLE.c.next_offset)})


_SAVE = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}


async def save(db: Database, group_id: str, records: list) -> None:
    """Record that `group_id` has applied these Kafka records (and every one before them)."""
    nexts: dict[tuple[str, int], int] = {}
    for r in records:
        nexts[(r.topic, r.partition)] = max(nexts.get((r.topic, r.partition), 0), r.offset + 1)
    if not nexts:
        return
    async with db.writes() as session, session.begin():
        await session.execute(_SAVE[session.get_bind().dialect.name], [
            {"group_id": group_id, "topic": t, "partition": p, "next_offset": n}
            for (t, p), n in sorted(nexts.items())])


async def rewind(settings: Settings, db: Database, group_ids: list[str]) -> None:
    """Move each group's committed offsets back to the database's positions where they are
    ahead (a database restored from a backup). Refuses to start while another process of the
    group runs: it would go on from the later offsets."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        for group_id in group_ids:
            async with db.reads() as session:
                applied = {TopicPartition(r.topic, r.partition): r.next_offset
                           for r in (await session.scalars(select(ConsumerPosition).where(
                               ConsumerPosition.group_id == group_id))).all()}
            committed = await admin.list_consumer_group_offsets(group_id)
            if not applied:
                # A new database, or one from before positions were kept: from here on, the
                # group's offsets are what it has applied.
                await _seed(db, group_id, committed)
                continue
            # A partition the database has no position for, it has applied nothing of.
            behind = {tp: applied.get(tp, 0) for tp, meta in committed.items()
                      if applied.get(tp, 0) < meta.offset}
            if behind:
                await _commit(settings, group_id, behind, {tp: committed[tp].offset for tp in behind})
    finally:
        await admin.close()


async def _seed(db: Database, group_id: str, committed: dict) -> None:
    rows = [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=meta.offset - 1)
            for tp, meta in committed.items() if meta.offset > 0]
    await save(db, group_id, rows)


async def _commit(settings: Settings, group_id: str, offsets: dict, was: dict) -> None:
    log.warning("database_behind_event_log", group=group_id,
                events=sum(was[tp] - offsets[tp] for tp in offsets),
                partitions={f"{tp.topic}[{tp.partition}]": [offsets[tp], was[tp]]
                            for tp in sorted(offsets)},
                why="the database is older than the group's offsets (restored from a backup?): "
                    "reading those events again")
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    except CommitFailedError:
        raise ConfigError(
            f"the database is behind consumer group {group_id} (restored from a backup?) while "
            "another process of that group runs: stop every Beacon process of this deployment, "
            "then start them again, so that the events since are read again") from None
    finally:
        await consumer.stop()
