"""services.common.kafka.consume on the real broker: a batch's offsets are committed only once
its handler has finished (never FastStream's ACK_FIRST, which loses a message to a crash), and a
message that cannot be read or keeps failing goes to the dead-letter topic with its reason while
the consumer goes on."""

import asyncio
import re
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.events import Envelope, Topics
from services.common import kafka
from services.intake.rebuild import _partitions
from tests.conftest import eventually, make_settings

REPORT = (Path(__file__).resolve().parents[1] / "fixtures" / "events"
          / "beacon.report.received.v1.json").read_bytes()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(kafka.backoff, "exponential", lambda failures, first_s, cap_s: 0)


@pytest.fixture
async def consumer(kafka_bootstrap, tmp_path):
    """Start `kafka.consume` with a handler, on this test's own topics; yields a starter."""
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await kafka.ensure_topics(settings)
    brokers = []

    async def start(handler):
        broker = kafka.make_broker(settings)
        async def batch(envelopes):  # as services consume: a batch handler
            for envelope in envelopes:
                await handler(envelope)
        kafka.consume(broker, settings, [Topics.INPUTS], "probe", batch)
        await broker.start()
        brokers.append(broker)
        return broker

    yield settings, start
    for broker in brokers:
        await broker.stop()


async def _send(settings, *values: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:  # one key: one partition, in this order
            await producer.send_and_wait(settings.topic(Topics.INPUTS), value, key=b"C-1")
    finally:
        await producer.stop()


async def _committed(settings) -> int:
    """The probe group's committed offsets on the inputs topic, summed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(settings.group("probe"))
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items()
               if tp.topic == settings.topic(Topics.INPUTS) and meta.offset > 0)


def _report(event_id: str) -> bytes:
    envelope = Envelope.model_validate_json(REPORT)
    return envelope.model_copy(update={"id": event_id}).model_dump_json().encode()


async def test_nothing_is_committed_before_the_handler_has_finished(consumer):
    settings, start = consumer
    entered, release, done = asyncio.Event(), asyncio.Event(), []

    async def handler(envelope):
        entered.set()
        await release.wait()  # the effect is under way: a crash now must bring it back
        done.append(envelope.id)

    await start(handler)
    await _send(settings, _report("e-1"))
    await asyncio.wait_for(entered.wait(), 30)
    # ACK_FIRST commits through aiokafka's auto-commit, every 5 s: wait past one.
    await asyncio.sleep(6)
    assert await _committed(settings) == 0
    release.set()
    await eventually(lambda: _committed_is(settings, 1))
    assert done == ["e-1"]


async def _committed_is(settings, n: int) -> bool:
    return await _committed(settings) == n


async def test_unreadable_and_failing_messages_are_dead_lettered_and_the_consumer_goes_on(
        consumer, capfd):
    settings, start = consumer
    tries, handled = {}, []

    async def handler(envelope):
        tries[envelope.id] = tries.get(envelope.id, 0) + 1
        if envelope.id == "e-poison":
            raise RuntimeError("this event breaks the handler")
        handled.append(envelope.id)

    await start(handler)
    await _send(settings, b"{not json", _report("e-poison"), _report("e-good"))
    await eventually(lambda: _handled(handled, "e-good"), timeout=60)
    # Counted once per try on its own (a batch that fails is then tried message by message).
    assert tries["e-poison"] >= kafka.MAX_ATTEMPTS and handled == ["e-good"]
    await eventually(lambda: _committed_is(settings, 3))

    dead = await _dead_letters(settings, 2)
    reasons = [headers["dlq_reason"] for _, headers in dead]
    assert reasons[0].startswith("unparseable:")
    assert reasons[1].startswith(f"failed {kafka.MAX_ATTEMPTS} times")
    assert "this event breaks the handler" in reasons[1]
    assert [value for value, _ in dead] == [b"{not json", _report("e-poison")]
    assert all(h["dlq_topic"] == settings.topic(Topics.INPUTS) for _, h in dead)
    logged = [line for line in "".join(capfd.readouterr()).splitlines() if "dead_lettered" in line]
    # The case is named: the key's, for the record that could not be read at all.
    assert len(logged) == 2 and all(re.search(r'case_id\W+C-1\b', line) for line in logged)


async def _handled(handled: list, event_id: str) -> bool:
    return event_id in handled


async def _dead_letters(settings, n: int) -> list[tuple[bytes, dict]]:
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        topic = settings.topic(Topics.DEADLETTER)
        parts = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
        reader.assign(parts)
        await reader.seek_to_beginning(*parts)
        out = []
        for _ in range(20):
            batch = await reader.getmany(timeout_ms=500)
            out += [(r.value, {k: v.decode() for k, v in r.headers}) for rs in batch.values()
                    for r in rs]
            if len(out) >= n:
                break
        return sorted(out, key=lambda d: int(d[1]["dlq_offset"]))
    finally:
        await reader.stop()
