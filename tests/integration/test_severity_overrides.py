"""A supervisor's severity override on the real stack: its reason kept in intake, sealed, opened
for the hotline and auditors in scope and refused to everyone else, every reading audited, and
the reason on no topic and in no log line. Its row is as durable as a report's: a refused publish
withdrawn, a crash-left one finished by a retry or the start-up sweep."""

from datetime import timedelta
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer
from sqlalchemy import select, update

from schemas.events import Envelope, Topics
from services import retention
from services.common import kafka
from services.common.audit import AuditRecord
from services.common.db import utcnow
from services.intake import submission
from services.intake.api.overrides import _opened
from services.intake.identity import IdentityVault
from services.intake.store import IdempotencyKey, SeverityOverrideRow
from tests.conftest import eventually
from tests.integration.test_authorities import _p1_case, _user
from tests.integration.test_intake_reports import _dies_before_publish, _severity
from tests.support.consumers import read_all
from tests.support.reports import report

REASON = "Canaryreason: spoke to the uncle, Canaryuncle Tran, on 0933444555"
CANARIES = ("Canaryreason", "Canaryuncle", "0933444555")


async def _override(stack, case_id: str, headers=None):
    async with stack.client("supervisor") as sup:
        return await sup.post(f"/api/v1/cases/{case_id}/updates", headers=headers, json={
            "severity_override": {"severity": "P3", "reason": REASON}})


async def _rows(stack) -> list[SeverityOverrideRow]:
    async with stack.rt.db.reads() as session:
        return list((await session.scalars(select(SeverityOverrideRow))).all())


async def _read(stack, who: str, case_id: str):
    async with stack.client(who) as api:
        return await api.get(f"/api/v1/cases/{case_id}/overrides")


async def _new_case(stack) -> str:
    async with stack.client("operator") as api:
        return (await api.post("/api/v1/reports", json=report())).json()["case_id"]


async def _every_topic(settings) -> bytes:
    consumer = AIOKafkaConsumer(*[settings.topic(t) for t in Topics.ALL],
                                bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        seen, idle = b"", 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=500)
            idle = 0 if batch else idle + 1
            seen += b"".join(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    return seen


async def test_the_reason_is_kept_sealed_and_opened_only_for_those_allowed(stack, capfd):
    case_id, _ = await _p1_case(stack)
    answer = await _override(stack, case_id)
    assert answer.status_code == 202, answer.text
    update_id = answer.json()["update_id"]
    async with stack.client("supervisor") as sup:
        await eventually(lambda: _severity(sup, case_id, "P3"))  # the override wins

    [row] = await _rows(stack)
    assert (row.update_id, row.case_id, row.severity, row.by_user, row.published) == (
        update_id, case_id, "P3", "test-supervisor", True)
    assert b"Canary" not in row.reason and "Canary" not in row.event  # sealed; codes only
    assert IdentityVault(stack.rt.settings.secret_key).open_text(row.reason) == REASON

    for who in ("supervisor", "operator", "auditor"):
        seen = await _read(stack, who, case_id)
        assert seen.status_code == 200, (who, seen.text)
        assert seen.headers["Cache-Control"] == "no-store"
        [item] = seen.json()["overrides"]
        assert {k: v for k, v in item.items() if k != "at"} == {
            "update_id": update_id, "severity": "P3", "by_user": "test-supervisor",
            "reason": REASON, "erased": False, "unreadable": False}
    elsewhere = [await _user(stack, "op-commune7", "operator", "commune:7", []),
                 await _user(stack, "auditor-commune7", "auditor", "commune:7", [])]
    for who in ("authority", "admin", *elsewhere):
        assert (await _read(stack, who, case_id)).status_code == 403, who
    assert (await _read(stack, "supervisor", "C-NOSUCHCASE1")).status_code == 404

    async with stack.rt.db.reads() as session:
        trail = list((await session.scalars(select(AuditRecord).where(AuditRecord.record.in_(
            (case_id, f"/api/v1/cases/{case_id}/overrides"))).order_by(AuditRecord.id))).all())
    reads = [r for r in trail if r.fields == ["override.reason"] and r.outcome == "ok"]
    assert [(r.user_id, r.action) for r in reads] == [
        ("test-supervisor", "read"), ("test-operator", "read"), ("test-auditor", "read")]
    # Each refusal names what was asked: `--field override.reason` finds them beside the reads.
    assert [(r.user_id, r.fields) for r in trail if r.action == "denied"] == [
        (who, ["override.reason"]) for who in ("test-authority", "test-admin", *elsewhere)]

    # The reason is on no topic (the event says only that one was given), in no log line and in
    # no audit record.
    seen = await _every_topic(stack.rt.settings)
    updated = [e for e in await read_all(stack.rt.settings, Topics.INPUTS)
               if e.data.get("update_id") == update_id]
    assert [(e.data["severity_override"], e.data["override_reason_given"]) for e in updated] == [
        ("P3", True)]
    logged = "".join(capfd.readouterr())
    assert "case_updated" in logged or update_id in logged or case_id in logged
    for canary in CANARIES:
        assert canary.encode() not in seen
        assert canary not in logged
        assert all(canary not in str(r.fields) for r in trail)


async def test_a_refused_override_is_withdrawn_not_half_accepted(stack, monkeypatch):
    """Refused with 503: kept unpublished (the broker might have taken it), never listed or
    swept; a retry with its key publishes it under the same id, one without is purged."""
    case_id = await _new_case(stack)

    async def down(*args):
        raise ConnectionError("the broker is down")

    real_publish = kafka.publish_input
    monkeypatch.setattr(kafka, "publish_input", down)
    refused = await _override(stack, case_id, headers={"Idempotency-Key": "o-down"})
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert (await _override(stack, case_id)).status_code == 503  # no key
    assert [r.published for r in await _rows(stack)] == [False, False]
    assert (await _read(stack, "supervisor", case_id)).json()["overrides"] == []
    monkeypatch.setattr(kafka, "publish_input", real_publish)
    assert await submission.sweep(stack.rt, older_than=timedelta(0)) == 0

    async with stack.rt.db.writes() as session, session.begin():  # time passes
        await session.execute(update(SeverityOverrideRow).values(
            created_at=utcnow() - timedelta(minutes=1)))
    accepted = await _override(stack, case_id, headers={"Idempotency-Key": "o-down"})
    assert accepted.status_code == 202, accepted.text
    a_day = stack.rt.settings.model_copy(update={"retention_withdrawn_days": 1})
    await retention.purge(stack.rt.db, a_day, {"intake"}, now=utcnow() + timedelta(days=2))
    assert [(r.update_id, r.published) for r in await _rows(stack)] == [
        (accepted.json()["update_id"], True)]
    events = [e for e in await read_all(stack.rt.settings, Topics.INPUTS)
              if e.data.get("update_id") is not None]
    assert [e.data["update_id"] for e in events] == [accepted.json()["update_id"]]


async def test_the_start_up_sweep_finishes_a_pending_override(stack, monkeypatch):
    case_id = await _new_case(stack)
    real_inputs = stack.rt.inputs
    monkeypatch.setattr(stack.rt, "inputs", _dies_before_publish(stack))
    assert (await _override(stack, case_id)).status_code == 500  # no Idempotency-Key
    monkeypatch.setattr(stack.rt, "inputs", real_inputs)
    [row] = await _rows(stack)
    assert not row.published
    pending = Envelope.model_validate_json(row.event)
    assert (await _read(stack, "supervisor", case_id)).json()["overrides"] == []  # not accepted

    assert await submission.sweep(stack.rt, older_than=timedelta(0)) == 1
    assert [r.published for r in await _rows(stack)] == [True]
    assert pending.id in [e.id for e in await read_all(stack.rt.settings, Topics.INPUTS)]
    async with stack.client("supervisor") as sup:
        await eventually(lambda: _severity(sup, case_id, "P3"))
    [item] = (await _read(stack, "supervisor", case_id)).json()["overrides"]
    assert (item["update_id"], item["reason"]) == (pending.data["update_id"], REASON)


async def test_a_retry_finishes_a_pending_override_and_is_audited(stack, monkeypatch):
    case_id = await _new_case(stack)
    key = {"Idempotency-Key": "o-crash"}
    real_inputs = stack.rt.inputs
    monkeypatch.setattr(stack.rt, "inputs", _dies_before_publish(stack))
    assert (await _override(stack, case_id, key)).status_code == 500
    monkeypatch.setattr(stack.rt, "inputs", real_inputs)
    [row] = await _rows(stack)
    async with stack.rt.db.reads() as session:  # the override's row holds its event, not the key
        assert (await session.get(IdempotencyKey, ("test-supervisor", "o-crash"))).event is None

    soon = await _override(stack, case_id, key)
    assert soon.status_code == 409 and soon.headers["Retry-After"] == "5"
    async with stack.rt.db.writes() as session, session.begin():  # time passes
        await session.execute(update(SeverityOverrideRow).values(
            created_at=utcnow() - timedelta(minutes=1)))

    later = await _override(stack, case_id, key)
    assert later.status_code == 202, later.text
    assert later.json()["update_id"] == row.update_id
    assert [r.published for r in await _rows(stack)] == [True]
    events = [e.id for e in await read_all(stack.rt.settings, Topics.INPUTS)]
    assert events.count(row.event_id) == 1
    async with stack.rt.db.reads() as session:
        writes = (await session.scalars(select(AuditRecord.outcome).where(
            AuditRecord.record == case_id, AuditRecord.action == "write",
            AuditRecord.user_id == "test-supervisor"))).all()
    # The retry while the first attempt might still be publishing was refused; the next one
    # finished the input (the author's write) and was answered from the key.
    assert writes == ["rejected", "ok", "replayed"]


def test_an_erased_or_unreadable_reason_says_so():
    vault = IdentityVault("k")
    row = SimpleNamespace(update_id="U-1", created_at=utcnow(), severity="P2", by_user="sup",
                          reason=vault.seal_text("checked"))
    assert _opened(vault, row).reason == "checked"
    assert _opened(IdentityVault("other"), row).unreadable
    row.reason = None
    erased = _opened(vault, row)
    assert erased.erased and erased.reason is None and not erased.unreadable
