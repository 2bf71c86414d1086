"""`beacon cases rebuild`: replay the case events from the start of each topic into a fresh read
model. Inputs first, so every case exists before its decisions, alerts and deliveries arrive."""

import json
import sys

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import delete, select

from schemas.events import TYPE_OF, Envelope, ReportReceived, Topics
from services.common.config import Settings
from services.common.db import Database, ProcessedEvent
from services.intake import readmodel
from services.intake.store import CaseAuthority, CaseCategory, CaseView, ParkedEvent, TimelineEntry

ORDER = (Topics.INPUTS, Topics.CASES, Topics.ALERTS, Topics.DELIVERIES)
RECEIVED = TYPE_OF[ReportReceived]


class Incomplete(Exception):
    """The topics no longer hold every event: a rebuild would drop the cases they made."""


async def rebuild(settings: Settings, progress=sys.stderr) -> int:
    db = Database(settings.database_url)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    applied = 0
    try:
        await _complete(settings, consumer)
        await _every_case_on_kafka(settings, consumer, db)
        async with db.writes() as session, session.begin():
            for table in (TimelineEntry, CaseAuthority, CaseCategory, CaseView, ParkedEvent):
                await session.execute(delete(table))
            await session.execute(delete(ProcessedEvent).where(
                ProcessedEvent.consumer == readmodel.CONSUMER))
        for name in ORDER:
            topic = settings.topic(name)
            parts = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
            if not parts:
                continue
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            end = await consumer.end_offsets(parts)
            total = sum(end.values())
            done = 0
            # A list, not a generator: with `await` inside, a generator would be asynchronous.
            while any([await consumer.position(tp) < end[tp] for tp in parts]):
                batch = await consumer.getmany(*parts, timeout_ms=1000, max_records=500)
                async with db.writes() as session, session.begin():
                    for records in batch.values():
                        for record in records:
                            done += 1
                            try:
                                envelope = Envelope.model_validate_json(record.value)
                                envelope.payload()
                            except Exception:
                                continue  # the live consumer dead-lettered it; so do we
                            applied += await readmodel.apply(session, envelope)
                print(f"  {topic}: {done}/{total}", file=progress, flush=True)
    finally:
        await consumer.stop()
        await db.dispose()
    return applied


async def _complete(settings: Settings, consumer: AIOKafkaConsumer) -> None:
    """Refuse, before anything is deleted, when a topic has lost its first events (retention):
    the model holds cases that Kafka can no longer make again."""
    gone = []
    for name in ORDER:
        topic = settings.topic(name)
        parts = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
        if parts:
            gone += [f"{tp.topic}[{tp.partition}] starts at offset {offset}"
                     for tp, offset in sorted((await consumer.beginning_offsets(parts)).items())
                     if offset > 0]
    if gone:
        raise Incomplete(
            "the topics no longer hold every case event (" + "; ".join(gone) + "): a rebuild "
            "would drop the cases made by the events that are gone. Nothing was changed. Keep "
            "the case topics for ever (retention.ms=-1, docs/admin.md) to be able to rebuild.")


async def _every_case_on_kafka(settings: Settings, consumer: AIOKafkaConsumer,
                               db: Database) -> None:
    """Refuse, before anything is deleted, when a case of the model has no report on the
    inputs topic: topics recreated empty (the broker's data lost) start at offset 0 too, and a
    rebuild from them dropped every earlier case, so that its authorities could no longer
    acknowledge it while escalation went on chasing them."""
    # The cases first, then the topic's end: a case's report is on Kafka before the case is in
    # the model, so a case opened while this reads is not taken for one the topic lacks.
    async with db.reads() as session:
        cases = set((await session.scalars(select(CaseView.case_id))).all())
    topic = settings.topic(Topics.INPUTS)
    parts = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
    on_kafka: set[str] = set()
    if parts:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        while any([await consumer.position(tp) < end[tp] for tp in parts]):
            for records in (await consumer.getmany(*parts, timeout_ms=1000,
                                                   max_records=2000)).values():
                for record in records:
                    try:
                        event = json.loads(record.value)
                        if event.get("type") == RECEIVED:
                            on_kafka.add(event.get("subject"))
                    except (ValueError, AttributeError):
                        continue  # unreadable: dead-lettered by the live consumer
    missing = sorted(cases - on_kafka)
    if missing:
        raise Incomplete(
            f"{len(missing)} case(s) of the read model have no report on {topic} "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}): the topics were "
            "recreated or emptied, and a rebuild would drop those cases. Nothing was changed.")


async def _partitions(settings: Settings, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described if t["error_code"] == 0 for p in t["partitions"])
