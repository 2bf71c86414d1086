"""Consumers accept the current and the previous schema version; anything else is dead-lettered.

The stored v1 events under tests/fixtures/events/ are what a v1 producer wrote: they must keep
parsing for as long as v2 is current (a replay reads them long after they were written).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from schemas import compat
from schemas.events import EVENT_TYPES, SCHEMA_VERSION, DeliveryOutcome, Envelope, ReportReceived
from services.common import kafka
from services.common.config import Settings
from tests.support.consumers import FakeBroker

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
CASE = "C-1M8JM7GV2A2SSRWFC"


def stored(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def outcome_v1(**data) -> Envelope:
    body = {"alert_id": f"{CASE}:province:1:child_protection:inform", "case_id": CASE,
            "authority_id": "province:1:child_protection", "status": "delivered",
            "channel": "webhook", "attempt": 1, **data}
    return Envelope(source="test", type="beacon.delivery.outcome", subject=CASE,
                    dataschema="urn:beacon:schema:beacon.delivery.outcome:v1", data=body)


def with_version(envelope: Envelope, version: int) -> Envelope:
    return envelope.model_copy(update={"dataschema": compat.dataschema(envelope.type, version)})


def test_current_version_is_2_and_wrap_writes_it():
    assert SCHEMA_VERSION == 2
    event = DeliveryOutcome(alert_id=f"{CASE}:commune:4:police:alert", case_id=CASE,
                            authority_id="commune:4:police", role="act", kind="alert",
                            status="delivered", channel="webhook", attempt=1)
    envelope = Envelope.wrap(event, "test")
    assert envelope.dataschema == "urn:beacon:schema:beacon.delivery.outcome:v2"
    assert Envelope.model_validate_json(envelope.model_dump_json()).payload() == event


def test_stored_v1_delivery_outcome_is_upgraded():
    raw = stored("beacon.delivery.outcome.v1.json")
    assert raw["dataschema"].endswith(":v1") and "role" not in raw["data"]
    data = Envelope.model_validate(raw).payload()
    assert isinstance(data, DeliveryOutcome)
    # Derived from the alert id: a reminder, and reminders go to act targets only.
    assert (data.kind, data.role) == ("reminder", "act")
    assert data.model_dump(exclude={"kind", "role"}) == raw["data"]


def test_stored_v1_report_received_is_unchanged():
    raw = stored("beacon.report.received.v1.json")
    data = Envelope.model_validate(raw).payload()
    assert isinstance(data, ReportReceived)
    assert data.model_dump(mode="json") == raw["data"]


def test_v1_inform_delivery_gets_the_inform_role():
    data = outcome_v1().payload()
    assert (data.kind, data.role) == ("inform", "inform")


def test_v1_delivery_that_already_names_role_and_kind_is_kept():
    data = outcome_v1(role="act", kind="alert").payload()
    assert (data.kind, data.role) == ("alert", "act")


def test_v1_delivery_with_an_unreadable_alert_id_is_refused():
    with pytest.raises(ValueError, match="alert kind"):
        outcome_v1(alert_id="al-1").payload()


@pytest.mark.parametrize("etype", sorted(set(EVENT_TYPES) - {"beacon.delivery.outcome"}))
def test_other_types_read_their_v1_payload_as_it_is(etype):
    data = {"case_id": CASE}
    assert compat.upgrade(etype, compat.dataschema(etype, 1), data, SCHEMA_VERSION) is data


def test_v2_changed_the_delivery_outcome_only():
    assert set(compat.STEPS) == {("beacon.delivery.outcome", 1)}


def test_future_version_is_refused_clearly():
    envelope = with_version(Envelope.model_validate(stored("beacon.report.received.v1.json")), 3)
    with pytest.raises(ValueError, match=r"v3 is newer than this consumer understands \(v2\)"):
        envelope.payload()


@pytest.mark.parametrize("dataschema, message", [
    ("urn:beacon:schema:beacon.report.received:v0", "too old"),
    ("urn:beacon:schema:beacon.case.updated:v2", "does not describe type"),
    ("https://example.org/schema.json", "is not urn:beacon:schema"),
    ("urn:beacon:schema:beacon.report.received:latest", "is not urn:beacon:schema"),
])
def test_other_dataschemas_are_refused(dataschema, message):
    raw = stored("beacon.report.received.v1.json") | {"dataschema": dataschema}
    with pytest.raises(ValueError, match=message):
        Envelope.model_validate(raw).payload()


def record(body: bytes, offset: int) -> SimpleNamespace:
    return SimpleNamespace(topic="beacon.deliveries", partition=0, offset=offset,
                           key=CASE.encode(), value=body)


async def test_a_field_a_newer_producer_added_is_ignored_not_dead_lettered():
    """Rolling upgrade: a newer escalation adds an optional field to its alerts; the older
    notifier must still deliver them (it dead-lettered every one)."""
    broker, seen = FakeBroker(), []

    async def handler(envelopes: list[Envelope]) -> None:
        seen.extend(envelope.payload() for envelope in envelopes)

    kafka.consume(broker, Settings(topic_prefix=""), ["beacon.deliveries"], "test", handler)
    current = Envelope.wrap(DeliveryOutcome(
        alert_id=f"{CASE}:commune:4:police:alert", case_id=CASE, authority_id="commune:4:police",
        role="act", kind="alert", status="delivered", channel="webhook", attempt=1), "test")
    newer = current.model_copy(update={"data": {**current.data, "added_later": "x"}})
    await broker.handler([record(newer.model_dump_json().encode(), 1)])
    assert [d.status for d in seen] == ["delivered"] and broker.published == []


async def test_consumer_handles_v1_and_dead_letters_v3():
    broker, seen = FakeBroker(), []

    async def handler(envelopes: list[Envelope]) -> None:
        seen.extend(envelope.payload() for envelope in envelopes)

    kafka.consume(broker, Settings(topic_prefix=""), ["beacon.deliveries"], "test", handler)
    v1 = (FIXTURES / "beacon.delivery.outcome.v1.json").read_bytes()
    v3 = with_version(Envelope.model_validate_json(v1), 3).model_dump_json().encode()

    await broker.handler([record(v1, 1), record(v3, 2)])

    assert [(d.kind, d.role) for d in seen] == [("reminder", "act")]
    [dead] = broker.published
    assert dead["topic"] == "beacon.deadletter" and dead["body"] == v3
    assert "newer than this consumer understands" in dead["headers"]["dlq_reason"]
    assert dead["headers"]["dlq_offset"] == "2"
    assert dead["headers"]["dlq_group"] == "beacon-test"  # which consumer set it aside
