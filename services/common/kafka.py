"""The Kafka broker factory, topic setup, and the consume wrapper every service uses.

Producers: acks=all and idempotence on. Consumers: commit after the handler's effects are durable
(AckPolicy.NACK_ON_ERROR, never ACK_FIRST), redeliver on failure, and send what cannot be parsed
or keeps failing to the dead-letter topic with the reason in headers, then go on.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from pydantic import ValidationError

from schemas.events import Envelope, Topics
from services.common import backoff, metrics, positions
from services.common.config import Settings
from services.common.db import Database, database_fault

log = structlog.get_logger("beacon.kafka")

PARTITIONS = 3
MAX_ATTEMPTS = 5  # a message that fails this often is dead-lettered rather than blocking its partition


def make_broker(settings: Settings) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        client_id="beacon",
        logger=None,
    )


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """The process's producer for intake's inputs and the outbox relays. A short request
    timeout makes a publish fail within seconds when the broker is gone: intake answers 503,
    and a relay keeps its rows and tries again. A failed publish may still reach the broker
    once it is back (seen in the outage fault test), so intake withdraws rather than deletes.
    It is not the broker's: consumers need the long default, since joining a group can wait
    out a dead member's session. Plain aiokafka, because FastStream's publish path doubled the
    cost of every outbox event (docs/performance.md)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True,
        request_timeout_ms=4000, client_id="beacon",
    )


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = []
        for name in Topics.ALL:
            topic = settings.topic(name)
            if topic in existing:
                continue
            configs = {"cleanup.policy": "compact"} if name == Topics.RULEPACKS else {}
            parts = 1 if name == Topics.RULEPACKS else PARTITIONS
            wanted.append(NewTopic(topic, parts, 1, topic_configs=configs))
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another instance made them first
            await _leaders_elected(admin, [t.name for t in wanted])
    finally:
        await admin.close()


async def topic_config(settings: Settings, name: str) -> dict[str, str]:
    """A topic's effective configuration, the broker's defaults included."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, settings.topic(name))])
    finally:
        await admin.close()
    [(error_code, message, _type, topic, entries)] = response.resources
    if error_code:
        raise RuntimeError(f"describing topic {topic}: error {error_code} {message}")
    return {entry[0]: entry[1] for entry in entries}


async def _leaders_elected(admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float = 15) -> None:
    """New topics answer NotLeaderForPartition for a moment; consumers start cleaner after it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        described = await admin.describe_topics(topics)
        if all(p["leader"] >= 0 for t in described for p in t["partitions"]) and all(
            t["partitions"] for t in described
        ):
            return
        await asyncio.sleep(0.2)


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def _headers(envelope: Envelope) -> dict[str, str]:
    return {"ce_id": envelope.id, "ce_type": envelope.type, "content-type": "application/json"}


def _raw_headers(envelope: Envelope) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in _headers(envelope).items()]


async def publish(broker: KafkaBroker, topic: str, envelope: Envelope) -> None:
    """Publish and wait for the broker's acknowledgement (acks=all)."""
    await broker.publish(encode(envelope), topic=topic, key=envelope.subject.encode(),
                         headers=_headers(envelope))


async def send(producer: AIOKafkaProducer, topic: str, payload: str) -> "asyncio.Future":
    """Hand an envelope, as stored (services/common/outbox.py), to the producer; returns the
    future of the broker's acknowledgement (acks=all)."""
    envelope = Envelope.model_validate_json(payload)
    return await producer.send(topic, payload.encode(), key=envelope.subject.encode(),
                               headers=_raw_headers(envelope))


async def publish_input(producer: AIOKafkaProducer, topic: str, envelope: Envelope) -> None:
    """Publish a human input with intake's producer and wait for the acknowledgement."""
    await producer.send_and_wait(
        topic, encode(envelope), key=envelope.subject.encode(), headers=_raw_headers(envelope))


async def dead_letter(broker: KafkaBroker, settings: Settings, record: Any, reason: str,
                      group: str) -> None:
    """Set `record` aside. Each consumer group that reads a topic does so for itself, so one
    bad record may be set aside by several (escalation and intake's read model both read the
    inputs): `dlq_group` tells them apart."""
    await broker.publish(
        record.value,
        topic=settings.topic(Topics.DEADLETTER),
        key=record.key,
        headers={
            "dlq_reason": reason[:500],
            "dlq_topic": record.topic,
            "dlq_partition": str(record.partition),
            "dlq_offset": str(record.offset),
            "dlq_group": settings.group(group),  # the consumer group, as the broker lists it
        },
    )
    # The key is the case id (every case event is keyed by it): which case lost an event.
    case_id = record.key.decode("utf-8", "replace")[:64] if record.key else None
    metrics.DEAD_LETTERS.inc()
    log.warning("dead_lettered", case_id=case_id, topic=record.topic, offset=record.offset,
                group=group, reason=reason[:200])


async def _records(msg: Any) -> list:
    # The raw records: we decode them ourselves, so a bad payload is dead-lettered, not a
    # stuck consumer.
    raw = msg.raw_message
    return list(raw) if isinstance(raw, tuple) else [raw]


BatchHandler = Callable[[list[Envelope]], Awaitable[None]]
MAX_RECORDS = 200  # a batch, applied in one transaction


@dataclass(frozen=True)
class Consumer:
    """A consumer group `consume` subscribed, as the broker names it: its lag is watched
    (services/backlog.py)."""

    group: str
    topics: list[str]
    subscriber: Any  # FastStream's; its aiokafka consumer is `subscriber.consumer` once started


def consume(
    broker: KafkaBroker, settings: Settings, topics: list[str], group: str,
    handler: BatchHandler, database_up: Callable[[], Awaitable[bool]] | None = None,
    db: Database | None = None,
) -> Consumer:
    """Subscribe to typed envelopes on `topics` in consumer group `group`, from the earliest
    offset for a new group.

    Records come in batches and the offset is committed once a batch is done (a commit per
    message caps a consumer near a hundred messages a second). `handler` applies a batch at
    once (one transaction); when a batch fails, its messages are applied one at a time, so
    that the one at fault is found. It must be idempotent by event id: after a failure or a
    crash the batch comes again. With `db`, each batch applied is recorded in it, and an
    assigned partition committed past that record is read again from it
    (services/common/positions.py): a database restored from a backup sees what it missed.
    A message that keeps failing is dead-lettered after MAX_ATTEMPTS, but a failure while
    `database_up()` says the database is away, or one that is the database's own state (full,
    locked, read-only: `db.database_fault`), is not the message's fault: it is not counted, and
    the batch is retried until the database is back, so an outage dead-letters nothing.
    """
    failures: dict[tuple[str, int, int], int] = {}
    # Unreadable records already dead-lettered: a batch sent back (NACK) brings them again.
    unreadable: dict[tuple[str, int, int], None] = {}
    outage = 0  # failures in a row while the database was away

    async def one(envelope: Envelope) -> None:
        with structlog.contextvars.bound_contextvars(case_id=envelope.subject, event_id=envelope.id):
            await handler([envelope])

    async def on_batch(records: list) -> None:
        await apply(records)
        if db is not None:
            await positions.save(db, settings.group(group), records)

    async def apply(records: list) -> None:
        nonlocal outage
        parsed = []
        for record in records:
            try:
                envelope = Envelope.model_validate_json(record.value)
                envelope.payload()
            except (ValidationError, KeyError, ValueError, TypeError) as exc:
                place = (record.topic, record.partition, record.offset)
                if place not in unreadable:
                    await dead_letter(broker, settings, record, f"unparseable: {_reason(exc)}",
                                      group)
                    unreadable[place] = None
                    if len(unreadable) > 10_000:
                        unreadable.pop(next(iter(unreadable)))  # the oldest: long committed
                continue
            parsed.append((record, envelope))
        if len(parsed) > 1:
            try:
                await handler([e for _, e in parsed])
                return
            except Exception:
                log.exception("batch_failed", group=group, size=len(parsed))
                # Go on one at a time, to find and set aside the message that fails.
        for record, envelope in parsed:
            place = (record.topic, record.partition, record.offset)
            try:
                await one(envelope)
                failures.pop(place, None)
                outage = 0
            except Exception as exc:
                if database_up is not None and (database_fault(exc) or not await database_up()):
                    outage += 1
                    log.warning("handler_waiting_for_database", group=group, attempt=outage,
                                case_id=envelope.subject, error=type(exc).__name__)
                    await asyncio.sleep(backoff.exponential(outage, 0.2, 5))
                    raise  # NACK, uncounted: it comes again once the database answers
                n = failures[place] = failures.get(place, 0) + 1
                if n >= MAX_ATTEMPTS:
                    failures.pop(place, None)
                    await dead_letter(broker, settings, record, f"failed {n} times: {_reason(exc)}",
                                      group)
                    continue
                log.exception("handler_failed", attempt=n, group=group, case_id=envelope.subject)
                await asyncio.sleep(backoff.exponential(n, 0.2, 2))  # a failing handler is not hammered
                raise  # NACK: nothing of this batch is committed; it comes again

    group_id, names = settings.group(group), [settings.topic(t) for t in topics]
    rewind = positions.Rewind(db, group_id) if db is not None else None
    subscriber = broker.subscriber(
        *names,
        group_id=group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        batch=True,
        max_records=MAX_RECORDS,
        batch_timeout_ms=100,
        decoder=_records,
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        title=group,
        listener=rewind,
    )
    subscriber(on_batch)
    if rewind is not None:
        rewind.subscriber = subscriber
    return Consumer(group_id, names, subscriber)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
    return f"{type(exc).__name__}: {exc}"[:300]
