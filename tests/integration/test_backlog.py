"""The backlog gauges (services/backlog.py), on SQLite and PostgreSQL: each shows its condition
while it holds, and reads 0 again once the service's own code has worked it off. The outbox
and the consumer lag on the real broker."""

import asyncio
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY
from sqlalchemy import update

from schemas.events import Envelope, MilestoneRecorded, Topics
from services import backlog
from services.common import kafka
from services.common.db import Database, utcnow
from services.common.outbox import OutboxRow, Relay, add
from services.escalation.directory import build_directory
from services.escalation.handlers import Escalation
from services.escalation.rulepack import load_pack
from services.escalation.store import MilestoneTimer, Timer
from services.notifier import store
from services.notifier.store import Delivery
from tests.conftest import _NoRelay, eventually, make_settings, migrate
from tests.integration.test_postgres import pg_database  # noqa: F401 (a fixture)

REPORT = (Path(__file__).resolve().parents[1] / "fixtures" / "events"
          / "beacon.report.received.v1.json").read_bytes()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}"
    return request.getfixturevalue("pg_database")


@pytest.fixture
async def db(database_url):
    await migrate(database_url)
    database = Database(database_url)
    yield database
    await database.dispose()


def watching(db, parts=(), relays=None, consumers=()):
    """The part of a runtime that backlog.refresh reads."""
    return SimpleNamespace(db=db, parts=dict.fromkeys(parts), relays=relays or {},
                           consumers=list(consumers))


def gauge(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels)


def escalation(db) -> Escalation:
    """The escalation service on `db`, to fire timers as its timer loop does."""
    pack = load_pack("default")
    return Escalation(SimpleNamespace(db=db, pack=pack, directory=build_directory(pack),
                                      relays={"escalation": _NoRelay()}))


async def test_a_timer_due_and_not_fired_shows_until_it_fires(db):
    esc = escalation(db)
    now = utcnow()
    async with db.writes() as session, session.begin():
        session.add_all([
            Timer(case_id="C-1", authority_id="a", kind="breach", due_at=now - timedelta(minutes=2)),
            Timer(case_id="C-1", authority_id="a", kind="reminder", due_at=now + timedelta(hours=1)),
            MilestoneTimer(case_id="C-1", milestone="m", authority_id="a", fraction=1.0,
                           due_at=now - timedelta(seconds=30)),
        ])
    rt = watching(db, parts=["escalation"])

    await backlog.refresh(rt)
    assert gauge("beacon_timers_overdue", kind="breach") == 1
    assert 120 <= gauge("beacon_timers_overdue_oldest_seconds", kind="breach") < 180
    assert gauge("beacon_timers_overdue", kind="milestone") == 1
    assert 30 <= gauge("beacon_timers_overdue_oldest_seconds", kind="milestone") < 90
    assert gauge("beacon_timers_overdue", kind="reminder") == 0  # due in an hour: not late

    assert await esc.fire_due() == 2
    await backlog.refresh(rt)
    for kind in backlog.TIMER_KINDS:
        assert gauge("beacon_timers_overdue", kind=kind) == 0
        assert gauge("beacon_timers_overdue_oldest_seconds", kind=kind) == 0


async def test_a_timer_put_back_after_failing_shows_until_it_fires(db):
    """Put back to try again later (timers._retry_later), it is not overdue: only its attempts
    show that a child's reminder or escalation is not happening."""
    esc = escalation(db)
    now = utcnow()
    async with db.writes() as session, session.begin():
        session.add_all([
            Timer(case_id="C-1", authority_id="a", kind="breach", attempts=2,
                  due_at=now + timedelta(minutes=4)),
            MilestoneTimer(case_id="C-1", milestone="m", authority_id="a", fraction=1.0,
                           attempts=1, due_at=now + timedelta(minutes=2)),
        ])
    rt = watching(db, parts=["escalation"])

    await backlog.refresh(rt)
    assert gauge("beacon_timers_retrying", kind="breach") == 1
    assert gauge("beacon_timers_retrying", kind="milestone") == 1
    assert gauge("beacon_timers_overdue", kind="breach") == 0  # what the other rule watches
    assert gauge("beacon_timers_retrying", kind="reminder") == 0

    assert await esc.fire_due(now + timedelta(minutes=5)) == 2  # its cause passed: it fires
    await backlog.refresh(rt)
    for kind in backlog.TIMER_KINDS:
        assert gauge("beacon_timers_retrying", kind=kind) == 0


async def test_an_undelivered_alert_shows_until_it_is_delivered(db):
    now = utcnow()
    async with db.writes() as session, session.begin():
        session.add(Delivery(alert_id="A-1", case_id="C-1", authority_id="a", severity="P1",
                             alert={}, status="pending", next_at=now,
                             created_at=now - timedelta(minutes=10), updated_at=now))
    rt = watching(db, parts=["notifier"])

    await backlog.refresh(rt)
    assert gauge("beacon_deliveries_undelivered", severity="P1") == 1
    assert 600 <= gauge("beacon_deliveries_undelivered_oldest_seconds", severity="P1") < 660
    assert gauge("beacon_deliveries_undelivered", severity="P2") == 0

    lease = now + timedelta(minutes=1)  # leased, as a claim does: still not delivered
    async with db.writes() as session, session.begin():
        await session.execute(store.LEASE, {"ids": ["A-1"], "until": lease, "at": now,
                                            "bundle": None})
    await backlog.refresh(rt)
    assert gauge("beacon_deliveries_undelivered", severity="P1") == 1

    async with db.writes() as session, session.begin():
        assert (await session.execute(store.DELIVERED, {"ids": ["A-1"], "until": lease,
                                                        "note": None, "at": now})).all()
    await backlog.refresh(rt)
    assert gauge("beacon_deliveries_undelivered", severity="P1") == 0
    assert gauge("beacon_deliveries_undelivered_oldest_seconds", severity="P1") == 0


async def test_an_unpublished_outbox_event_shows_until_the_relay_publishes_it(db, kafka_bootstrap):
    settings = make_settings(kafka_bootstrap, db.url)
    await kafka.ensure_topics(settings)
    async with db.writes() as session, session.begin():
        add(session, "escalation", settings.topic(Topics.CASES), Envelope.wrap(MilestoneRecorded(
            case_id="C-1", milestone="m", authority_id="a", by_user="u", at=utcnow()), "test"))
    async with db.writes() as session, session.begin():  # written five minutes ago
        await session.execute(update(OutboxRow).values(
            created_at=utcnow() - timedelta(minutes=5)))
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        relay = Relay("escalation", db, producer)
        rt = watching(db, relays={"escalation": relay, "notifier": Relay("notifier", db, producer)})

        await backlog.refresh(rt)
        assert gauge("beacon_outbox_unpublished", service="escalation") == 1
        assert 300 <= gauge("beacon_outbox_unpublished_oldest_seconds", service="escalation") < 360
        assert gauge("beacon_outbox_unpublished", service="notifier") == 0

        assert await relay.drain_once() == 1
        await backlog.refresh(rt)
        assert gauge("beacon_outbox_unpublished", service="escalation") == 0
        assert gauge("beacon_outbox_unpublished_oldest_seconds", service="escalation") == 0
    finally:
        await producer.stop()


async def test_consumer_lag_counts_the_events_a_group_has_not_applied(db, kafka_bootstrap):
    settings = make_settings(kafka_bootstrap, db.url)
    await kafka.ensure_topics(settings)
    entered, release = asyncio.Event(), asyncio.Event()

    async def handler(envelopes):  # holds its batch, as a slow database would
        entered.set()
        await release.wait()

    broker = kafka.make_broker(settings)
    consumer = kafka.consume(broker, settings, [Topics.INPUTS], "probe", handler, db=db)
    await broker.start()
    rt = watching(db, consumers=[consumer])
    lag = {"group": settings.group("probe"), "topic": settings.topic(Topics.INPUTS)}
    try:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            template = Envelope.model_validate_json(REPORT)
            for n in range(3):  # one key: one partition
                event = template.model_copy(update={"id": f"lag-{n}"}).model_dump_json()
                await producer.send_and_wait(lag["topic"], event.encode(), key=b"C-1")
        finally:
            await producer.stop()
        await asyncio.wait_for(entered.wait(), 30)

        async def lagging():
            await backlog.refresh(rt)
            return gauge("beacon_consumer_lag", **lag) == 3

        await eventually(lagging)
        release.set()

        async def caught_up():
            await backlog.refresh(rt)
            return gauge("beacon_consumer_lag", **lag) == 0

        await eventually(caught_up)
    finally:
        release.set()
        await broker.stop()
