"""The outbox relay on the real broker: every row published once acknowledged, and each case's
events arrive in the order they were written, however the cases interleave."""

import asyncio
import json

from aiokafka import AIOKafkaConsumer
from sqlalchemy import func, select

from schemas.events import Envelope, MilestoneRecorded
from services.common import kafka
from services.common.db import Database, utcnow
from services.common.outbox import OutboxRow, Relay, add
from tests.conftest import make_settings, migrate


async def test_each_case_arrives_in_order_and_rows_go_once_published(kafka_bootstrap, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await migrate(settings.database_url)
    topic = settings.topic("cases")
    await kafka.ensure_topics(settings)
    db, producer = Database(settings.database_url), kafka.make_producer(settings)
    await producer.start()
    written: dict[str, list[str]] = {}
    try:
        async with db.writes() as session, session.begin():
            for step in range(6):  # cases interleaved, as a batch of decisions writes them
                for n in range(40):
                    case_id = f"C-{n:03d}"
                    envelope = Envelope.wrap(MilestoneRecorded(
                        case_id=case_id, milestone=f"step-{step}", authority_id="a", by_user="u",
                        at=utcnow()), "test")
                    add(session, "test", topic, envelope)
                    written.setdefault(case_id, []).append(envelope.id)
        relay = Relay("test", db, producer, batch=100)
        while await relay.drain_once():
            pass
        async with db.reads() as session:
            assert await session.scalar(select(func.count()).select_from(OutboxRow)) == 0
    finally:
        await producer.stop()
        await db.dispose()

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    arrived: dict[str, list[str]] = {}
    try:
        while sum(map(len, arrived.values())) < 240:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value)
                    arrived.setdefault(event["subject"], []).append(event["id"])
    finally:
        await consumer.stop()
    assert arrived == written
