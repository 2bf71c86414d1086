"""kill -9 the escalation service at random moments while reports stream in and timers fall due;
restart it each time. Every report is decided exactly once, every effect happens once (an event
published twice carries the same id), and every due timer fires."""

import asyncio
import random
from collections import defaultdict
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, select

from schemas.events import Envelope, ReportReceived, Topics
from schemas.reports import Location
from services.common.db import Database
from services.common.outbox import OutboxRow
from services.escalation.store import EscalationCase, Timer
from services.intake.rebuild import _partitions
from tests.conftest import eventually, make_settings
from tests.support.consumers import read_all
from tests.support.packs import fast_pack
from tests.support.process import BeaconProcess, beacon

REPORTS = 150
KILL_AFTER_S = (0.0, 0.8, 0.05, 1.5, 0.2)  # after each burst of 30 reports


def _report(i: int) -> Envelope:
    data = ReportReceived(
        case_id=f"C-CRASH{i:06d}", report_id=f"R-CRASH{i:06d}", new_case=True,
        received_at=datetime.now(UTC), channel="phone", category="PHYS_VIOLENCE",
        location=Location(province_code=1, commune_code=4), setting="home", child_ages=[5],
        indicators=["ongoing"],
    )
    return Envelope.wrap(data, "test")


async def test_escalation_survives_kill_9(kafka_bootstrap, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'esc.db'}",
                             rulepack=str(fast_pack(tmp_path)), timer_interval_s=0.2)
    await asyncio.to_thread(beacon, settings, "db", "upgrade")
    service = BeaconProcess(settings, "escalation", tmp_path / "escalation.log")
    await asyncio.to_thread(service.start)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all",
                                enable_idempotence=True)
    await producer.start()
    rng = random.Random(7)
    in_flight = []  # at each kill: inputs on Kafka that the killed process had not committed
    try:
        for i in range(REPORTS):
            envelope = _report(i)
            await producer.send(settings.topic(Topics.INPUTS), envelope.model_dump_json().encode(),
                                key=envelope.subject.encode())
            if i % 30 == 29:  # mid-stream, with timers of earlier cases falling due
                await producer.flush()
                # Some kills land on the batch just sent, others later, among timers.
                await asyncio.sleep(KILL_AFTER_S[len(in_flight)] * rng.uniform(0.8, 1.2))
                service.kill()
                in_flight.append(await _uncommitted(settings))
                await asyncio.to_thread(service.start)
        await producer.flush()
    finally:
        await producer.stop()

    db = Database(settings.database_url)

    last = {}

    async def quiet():
        # Every report decided, every timer fired (the chain commune -> province -> national
        # has run), and every effect handed to Kafka (the outbox is empty).
        async with db.reads() as session:
            last["cases"] = await session.scalar(select(func.count()).select_from(EscalationCase))
            last["unfired"] = await session.scalar(select(func.count()).select_from(Timer).where(
                Timer.fired_at.is_(None)))
            last["unsent"] = await session.scalar(select(func.count()).select_from(OutboxRow))
        return last == {"cases": REPORTS, "unfired": 0, "unsent": 0}

    try:
        try:
            await eventually(quiet, timeout=180, interval=0.5)
        except AssertionError:
            problems = [line for line in service.log_path.read_text().splitlines()
                        if '"level": "error"' in line or '"level": "warning"' in line]
            raise AssertionError(f"not settled: {last}; last problems logged: "
                                 f"{problems[-5:]}") from None
    finally:
        await db.dispose()
        service.stop()

    # The kills mattered: some came while the process had inputs it had not committed, which
    # its successor had to take up again (and, for any whose effects were written, drop).
    assert any(n > 0 for n in in_flight), in_flight
    cases = await read_all(settings, Topics.CASES)
    alerts = await read_all(settings, Topics.ALERTS)

    decided = defaultdict(set)
    escalations = defaultdict(set)
    for e in cases:
        if e.type == "beacon.case.decided":
            decided[e.subject].add(e.id)
        elif e.type == "beacon.target.escalated":
            d = e.data
            escalations[(e.subject, d["authority_id"], d["step"], d.get("fraction"))].add(e.id)
    alert_ids = defaultdict(set)
    for e in alerts:
        alert_ids[e.data["alert_id"]].add(e.id)

    # Every report decided, exactly once.
    assert len(decided) == REPORTS
    assert all(len(ids) == 1 for ids in decided.values()), {
        c: len(i) for c, i in decided.items() if len(i) > 1}
    # No alert and no escalation step happened twice.
    assert all(len(ids) == 1 for ids in alert_ids.values())
    assert all(len(ids) == 1 for ids in escalations.values())
    # Every due timer fired: each case's commune child-protection target was reminded at 50%
    # and 80%, breached, and the province was held to the same window in its place.
    for i in range(REPORTS):
        case = f"C-CRASH{i:06d}"
        for step, fraction in (("reminder", 0.5), ("reminder", 0.8), ("breach", 1.0)):
            assert escalations[(case, "commune:4:child_protection", step, fraction)], (case, step)
        assert escalations[(case, "commune:4:child_protection", "escalated", None)], case


async def _uncommitted(settings) -> int:
    """Inputs on Kafka past the escalation group's committed offsets."""
    topic = settings.topic(Topics.INPUTS)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.group("escalation"))
        parts = [TopicPartition(topic, p) for p in await _partitions(settings, topic)]
        ends = await consumer.end_offsets(parts)
    finally:
        await consumer.stop()
        await admin.close()
    return sum(end - max(committed[tp].offset, 0) if tp in committed else end
               for tp, end in ends.items())
