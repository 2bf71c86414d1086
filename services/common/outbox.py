"""Transactional outbox: events a state change causes are rows in the same transaction, and a
relay publishes them to Kafka afterwards. A crash anywhere neither loses nor duplicates an effect:
unpublished rows are published after restart, and consumers drop repeats by event id."""

import asyncio
import zlib
from datetime import datetime

import structlog
from aiokafka import AIOKafkaProducer
from sqlalchemy import Integer, String, Text, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from schemas.events import Envelope
from services.common import kafka, metrics
from services.common.db import Base, Database, add_bulk, log_failure, utcnow

log = structlog.get_logger("beacon.outbox")


class OutboxRow(Base):
    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    service: Mapped[str] = mapped_column(String(32), index=True)  # whose relay publishes it
    topic: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


def add(session: AsyncSession, service: str, topic: str, envelope: Envelope) -> None:
    add_bulk(session, OutboxRow, service=service, topic=topic, event_id=envelope.id,
             case_id=envelope.subject, payload=envelope.model_dump_json(), created_at=utcnow())


class Relay:
    """Publishes outbox rows in insertion order. `poke()` after a commit avoids waiting a poll."""

    def __init__(self, service: str, db: Database, producer: AIOKafkaProducer,
                 interval_s: float = 0.5, batch: int = 200):
        self.service, self.db, self.producer = service, db, producer
        self.interval_s, self.batch = interval_s, batch
        self._wake = asyncio.Event()
        self.published = 0
        self._lock_key = zlib.crc32(f"beacon.outbox.{service}".encode())  # one lock per service

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                while await self.drain_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, "outbox_relay_failed", exc)  # broker or database away
                await asyncio.sleep(1)
            try:  # not wait_for: on 3.11 it loses a cancel that comes as the event is set
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def drain_once(self) -> int:
        # On PostgreSQL the relays of one service's instances take turns (a lock held for the
        # transaction): two publishing neighbouring batches at once could put one case's events
        # on Kafka out of order. SQLite has one relay per file, so the batch is read without the
        # write lock and other writers are not held up by a slow broker.
        postgres = not self.db.url.startswith("sqlite")
        sessions = self.db.writes if postgres else self.db.reads
        async with sessions() as session, session.begin():
            if postgres and not await session.scalar(_TAKE_TURN, {"key": self._lock_key}):
                return 0  # another instance is publishing; it drains what is there
            rows = (await session.execute(_BATCH, {"service": self.service,
                                                   "batch": self.batch})).all()
            if not rows:
                return 0
            # Every row is handed to the producer in id order, then the acknowledgements are
            # awaited together. The producer is idempotent, so Kafka keeps one case's events
            # (one key, one partition) in this order, retries included. Rows are deleted only
            # after every publish is acknowledged.
            acks = [await kafka.send(self.producer, row.topic, row.payload) for row in rows]
            for outcome in await asyncio.gather(*acks, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome  # the batch stays; it is published again, and repeats dropped
            ids = [r.id for r in rows]
            if postgres:
                await session.execute(_DONE, {"ids": ids})
        if not postgres:
            async with self.db.writes() as session, session.begin():
                await session.execute(_DONE, {"ids": ids})
        self.published += len(rows)
        metrics.OUTBOX.labels(self.service).inc(len(rows))
        return len(rows)


# Built once, and read as plain rows rather than ORM objects: every event passes through here.
_OUTBOX = OutboxRow.__table__  # the table's columns: Core statements, not the ORM's path
_BATCH = (select(_OUTBOX.c.id, _OUTBOX.c.topic, _OUTBOX.c.payload)
          .where(_OUTBOX.c.service == bindparam("service"))
          .order_by(_OUTBOX.c.id).limit(bindparam("batch")))
_DONE = _OUTBOX.delete().where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
_TAKE_TURN = select(func.pg_try_advisory_xact_lock(bindparam("key")))
