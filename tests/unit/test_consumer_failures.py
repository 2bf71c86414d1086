"""What the consumer does when its handler fails: a message at fault is dead-lettered after
MAX_ATTEMPTS; while the database is away nothing is counted and nothing is dead-lettered."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from schemas.events import Envelope
from services.common import kafka
from services.common.config import Settings
from tests.support.consumers import FakeBroker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
BODY = (FIXTURES / "beacon.delivery.outcome.v1.json").read_bytes()


RECORD = SimpleNamespace(topic="beacon.deliveries", partition=0, offset=7, key=b"C-1", value=BODY)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(kafka.backoff, "exponential", lambda failures, first_s, cap_s: 0)


def consumer(handler, database_up=None) -> FakeBroker:
    """`handler` takes one envelope; the consumer is given a batch handler, as services are."""
    broker = FakeBroker()
    kafka.consume(broker, Settings(topic_prefix=""), ["beacon.deliveries"], "test",
                  each(handler), database_up=database_up)
    return broker


def each(handler):
    async def batch(envelopes):
        for envelope in envelopes:
            await handler(envelope)
    return batch


async def redeliver(broker: FakeBroker, times: int) -> int:
    """Hand the record in as Kafka would after each NACK; returns how many tries raised."""
    raised = 0
    for _ in range(times):
        try:
            await broker.handler([RECORD])
        except RuntimeError:
            raised += 1
    return raised


async def test_a_message_that_keeps_failing_is_dead_lettered_with_the_reason():
    async def handler(envelope):
        raise RuntimeError("bad data in this message")

    broker = consumer(handler, database_up=_answer(lambda: True))

    raised = await redeliver(broker, kafka.MAX_ATTEMPTS)

    assert raised == kafka.MAX_ATTEMPTS - 1  # the last try dead-letters and goes on
    [dead] = broker.published
    assert dead["topic"] == "beacon.deadletter" and dead["body"] == BODY
    assert dead["headers"]["dlq_reason"].startswith(f"failed {kafka.MAX_ATTEMPTS} times")
    assert "bad data in this message" in dead["headers"]["dlq_reason"]


async def test_failures_while_the_database_is_away_dead_letter_nothing():
    up, applied = [False], []

    async def handler(envelope):
        if not up[0]:
            raise RuntimeError("connection refused")
        applied.append(envelope.id)

    broker = consumer(handler, database_up=_answer(lambda: up[0]))

    assert await redeliver(broker, 3 * kafka.MAX_ATTEMPTS) == 3 * kafka.MAX_ATTEMPTS
    assert broker.published == []  # a long outage: every try raised (NACK), none was counted
    up[0] = True
    await redeliver(broker, 1)
    assert len(applied) == 1 and broker.published == []


async def test_failures_before_an_outage_still_count_after_it():
    """An outage neither resets nor adds to a message's own count of failures."""
    up = [True]

    async def handler(envelope):
        raise RuntimeError("bad data in this message")

    broker = consumer(handler, database_up=_answer(lambda: up[0]))
    await redeliver(broker, kafka.MAX_ATTEMPTS - 1)
    up[0] = False
    await redeliver(broker, 10)
    assert broker.published == []
    up[0] = True
    await redeliver(broker, 1)
    assert len(broker.published) == 1


async def test_a_failing_batch_sets_aside_only_its_message_at_fault():
    """A batch fails as a whole (one transaction); applied one message at a time, the one at
    fault is dead-lettered and the others are applied."""
    applied = set()
    records = [SimpleNamespace(topic="beacon.deliveries", partition=0, offset=10 + i, key=b"C-1",
                               value=_with_id(f"e{i}")) for i in range(3)]

    async def handler(envelopes):
        if any(e.id == "e1" for e in envelopes):
            raise RuntimeError("bad data in e1")
        applied.update(e.id for e in envelopes)

    broker = FakeBroker()
    kafka.consume(broker, Settings(topic_prefix=""), ["beacon.deliveries"], "test", handler,
                  database_up=_answer(lambda: True))
    for _ in range(kafka.MAX_ATTEMPTS):  # as Kafka hands the batch in again after each NACK
        try:
            await broker.handler(records)
        except RuntimeError:
            pass
    assert applied == {"e0", "e2"}
    [dead] = broker.published
    assert dead["headers"]["dlq_offset"] == "11" and "bad data in e1" in dead["headers"]["dlq_reason"]


def _with_id(event_id: str) -> bytes:
    return Envelope.model_validate_json(BODY).model_copy(
        update={"id": event_id}).model_dump_json().encode()


def _answer(up):
    """database_up() as the consumer calls it, answering what `up()` says now."""
    async def database_up() -> bool:
        return up()
    return database_up


async def test_the_database_probe_tells_up_from_away(tmp_path):
    from services.common.db import Database

    here = Database(f"sqlite+aiosqlite:///{tmp_path}/beacon.db")
    away = Database("postgresql+asyncpg://beacon:beacon@127.0.0.1:1/beacon")  # nothing listens
    try:
        assert await here.is_up() is True
        assert await away.is_up(timeout_s=1) is False
    finally:
        await here.dispose()
        await away.dispose()
    assert await here.is_up() is False  # disposed: no new connection is opened to ask


async def test_an_unreadable_record_is_dead_lettered_once_however_often_its_batch_comes():
    async def handler(envelope):
        raise RuntimeError("bad data in this message")

    broker = consumer(handler, database_up=_answer(lambda: True))
    unreadable = SimpleNamespace(topic="beacon.deliveries", partition=0, offset=6, key=b"C-1",
                                 value=b"not json")
    for _ in range(kafka.MAX_ATTEMPTS):  # sent back (NACK) by the next record's failures
        try:
            await broker.handler([unreadable, RECORD])
        except RuntimeError:
            pass
    reasons = [p["headers"]["dlq_reason"] for p in broker.published]
    assert len(reasons) == 2
    assert reasons[0].startswith("unparseable") and reasons[1].startswith("failed")


def _sqlite_error(tmp_path, statement: str, **connect) -> BaseException:
    """The error a real SQLite gives for `statement`, as SQLAlchemy raises it."""
    import sqlite3

    from sqlalchemy import create_engine, text

    path = tmp_path / "fault.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS t (x)")
    engine = create_engine(f"sqlite:///file:{path}?{connect.get('query', 'mode=rw')}&uri=true",
                           connect_args={"timeout": 0})
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    except Exception as exc:  # noqa: BLE001 - the error is what the test wants
        return exc
    finally:
        engine.dispose()
    raise AssertionError(f"{statement} did not fail")


def test_database_faults_are_told_from_a_messages_own(tmp_path):
    import sqlite3

    from services.common.db import database_fault

    read_only = _sqlite_error(tmp_path, "INSERT INTO t VALUES (1)", query="mode=ro")
    assert "readonly" in str(read_only) and database_fault(read_only)
    holder = sqlite3.connect(tmp_path / "fault.db")
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        locked = _sqlite_error(tmp_path, "INSERT INTO t VALUES (1)")
    finally:
        holder.rollback()
        holder.close()
    assert "locked" in str(locked) and database_fault(locked)
    bug = _sqlite_error(tmp_path, "INSERT INTO no_such_table VALUES (1)")
    assert not database_fault(bug)  # a fault of the code or the message: counted

    class PgError(Exception):  # asyncpg's errors carry the SQLSTATE
        def __init__(self, sqlstate):
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    def wrapped(sqlstate):
        try:
            raise RuntimeError("wrapped") from PgError(sqlstate)
        except RuntimeError as exc:
            return exc

    assert database_fault(wrapped("25006"))  # read-only transaction: a replica after failover
    assert database_fault(wrapped("53100"))  # disk full
    assert database_fault(wrapped("08006"))  # connection failure
    assert not database_fault(wrapped("23505"))  # a unique violation: the data's
    assert not database_fault(wrapped("22001"))  # a value too long: the message's


async def test_a_database_fault_while_reads_still_answer_dead_letters_nothing(tmp_path):
    fault, applied = [_sqlite_error(tmp_path, "INSERT INTO t VALUES (1)", query="mode=ro")], []

    async def handler(envelope):
        if fault[0] is not None:
            raise fault[0]
        applied.append(envelope.id)

    broker = consumer(handler, database_up=_answer(lambda: True))  # SELECT 1 still answers
    await redeliver_raising(broker, 3 * kafka.MAX_ATTEMPTS)
    assert broker.published == []
    fault[0] = None
    await redeliver_raising(broker, 1)
    assert len(applied) == 1 and broker.published == []


async def redeliver_raising(broker: FakeBroker, times: int) -> None:
    for _ in range(times):
        try:
            await broker.handler([RECORD])
        except Exception:  # noqa: BLE001, S110 - a NACK: Kafka would hand the batch in again
            pass
