"""Retention per record class on a real SQLite file: what has outlived its class goes, in
batches, audited where it is identity; everything younger, open or kept for ever stays."""

import asyncio
import subprocess
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from services import retention, runtime
from services.common import kafka
from services.common.config import ConfigError
from services.common.audit import AuditRecord
from services.common.db import ProcessedEvent, utcnow
from services.intake import readmodel
from services.intake.store import (
    CaseAuthority, CaseView, IdempotencyKey, ReportRow, SeverityOverrideRow, WithdrawnInput,
)
from services.notifier.store import Delivery
from tests.conftest import eventually, make_settings, start_stack
from tests.support.process import BEACON, beacon, beacon_env

BOTH = {"intake", "notifier"}
NOW = utcnow()


def kept_for(identity=0, idempotency=30, deliveries=90, withdrawn=1):
    return SimpleNamespace(retention_identity_days=identity,
                           retention_idempotency_days=idempotency,
                           retention_deliveries_days=deliveries,
                           retention_withdrawn_days=withdrawn)


async def add_case(db, case_id, status, days_ago, reports=2, routed=True, severity="P2"):
    at = NOW - timedelta(days=days_ago)
    async with db.writes() as s, s.begin():
        s.add(CaseView(case_id=case_id, category="NEGLECT", province_code=1, commune_code=4,
                       setting="home", status=status, first_received_at=at, last_received_at=at,
                       severity=severity,
                       child_fingerprints=["fp-child"], child_sexes=["female"], updated_at=at))
        if routed:
            await s.flush()
            s.add(CaseAuthority(case_id=case_id, authority_id="commune:4:child_protection"))
        for i in range(reports):
            s.add(ReportRow(report_id=f"R-{case_id}-{i}", case_id=case_id,
                            event_id=f"E-{case_id}-{i}", event="{}", published=True,
                            received_at=at, submitted_by="op", identity=b"sealed",
                            reporter_fingerprint="fp-phone", child_fingerprints=["fp-child"],
                            child_sexes=["female"], created_at=at))


async def add_override(db, case_id, n, reason=b"sealed reason"):
    async with db.writes() as s, s.begin():
        s.add(SeverityOverrideRow(update_id=f"U-{case_id}-{n}", case_id=case_id,
                                  event_id=f"EU-{case_id}-{n}", event="{}", published=True,
                                  severity="P2", reason=reason, by_user="sup", created_at=NOW))


async def add_key(db, key, days_ago):
    async with db.writes() as s, s.begin():
        s.add(IdempotencyKey(user_id="op", key=key, body_hash="h", response={},
                             created_at=NOW - timedelta(days=days_ago)))


async def add_delivery(db, alert_id, status, days_ago):
    at = NOW - timedelta(days=days_ago)
    async with db.writes() as s, s.begin():
        s.add(Delivery(alert_id=alert_id, case_id="C-1", authority_id="commune:4:police",
                       severity="P3", alert={}, status=status, next_at=at, created_at=at,
                       updated_at=at))


async def table(db, model):
    async with db.reads() as s:
        return (await s.scalars(select(model))).all()


async def test_identity_of_a_closed_case_is_erased_after_its_days_and_audited(sqlite_db):
    await add_case(sqlite_db, "C-OLD", "closed", days_ago=40)
    await add_case(sqlite_db, "C-RECENT", "closed", days_ago=10)
    await add_case(sqlite_db, "C-OPEN", "open", days_ago=400)
    # A call for information only (P5) is routed to nobody, so nobody ever closes its case.
    await add_case(sqlite_db, "C-INFO", "open", days_ago=40, reports=1, routed=False,
                   severity="P5")
    await add_case(sqlite_db, "C-INFO-RECENT", "open", days_ago=10, reports=1, routed=False,
                   severity="P5")
    # Not decided yet (a decision dead-lettered, or a rebuild between its topics): routed to
    # nobody as it stands, but authorities may be working on it (the verification review).
    await add_case(sqlite_db, "C-UNDECIDED", "open", days_ago=40, reports=1, routed=False,
                   severity=None)

    assert await retention.purge(sqlite_db, kept_for(identity=30), BOTH) == {
        "identity": 3, "idempotency": 0, "withdrawn": 0, "deliveries": 0}

    reports = {r.report_id: r for r in await table(sqlite_db, ReportRow)}
    for i in range(2):
        erased = reports[f"R-C-OLD-{i}"]
        assert (erased.identity, erased.reporter_fingerprint, erased.child_fingerprints,
                erased.child_sexes) == (None, None, [], [])
        assert reports[f"R-C-RECENT-{i}"].identity == b"sealed"
        assert reports[f"R-C-RECENT-{i}"].child_sexes == ["female"]
        assert reports[f"R-C-OPEN-{i}"].identity == b"sealed"
    assert reports["R-C-INFO-0"].identity is None
    assert reports["R-C-INFO-RECENT-0"].identity == b"sealed"
    assert reports["R-C-UNDECIDED-0"].identity == b"sealed"
    cases = {c.case_id: c for c in await table(sqlite_db, CaseView)}
    assert (cases["C-OLD"].child_fingerprints, cases["C-OLD"].child_sexes) == ([], [])
    assert (cases["C-RECENT"].child_fingerprints, cases["C-RECENT"].child_sexes) == (
        ["fp-child"], ["female"])
    entries = await table(sqlite_db, AuditRecord)
    assert sorted((e.user_id, e.action, e.record, tuple(e.fields)) for e in entries) == [
        ("system:retention", "erase", case_id, tuple(retention.ERASED))
        for case_id in ("C-INFO", "C-OLD")]

    # Nothing is left to erase: a second run changes and records nothing.
    assert (await retention.purge(sqlite_db, kept_for(identity=30), BOTH))["identity"] == 0
    assert len(await table(sqlite_db, AuditRecord)) == 2


async def test_override_reasons_of_a_closed_case_are_erased_with_its_identity(sqlite_db,
                                                                             monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 2)  # reports and overrides share the batches
    await add_case(sqlite_db, "C-OLD", "closed", days_ago=40, reports=1)
    for n in range(2):
        await add_override(sqlite_db, "C-OLD", n)
    await add_case(sqlite_db, "C-ERASED", "closed", days_ago=40, reports=0)  # reports gone
    await add_override(sqlite_db, "C-ERASED", 0)
    await add_case(sqlite_db, "C-RECENT", "closed", days_ago=10, reports=0)
    await add_override(sqlite_db, "C-RECENT", 0)
    await add_case(sqlite_db, "C-OPEN", "open", days_ago=400, reports=0)
    await add_override(sqlite_db, "C-OPEN", 0)

    assert (await retention.purge(sqlite_db, kept_for(identity=30), BOTH, dry_run=True))[
        "identity"] == 4
    assert (await retention.purge(sqlite_db, kept_for(identity=30), BOTH))["identity"] == 4

    reasons = {o.update_id: o.reason for o in await table(sqlite_db, SeverityOverrideRow)}
    assert reasons == {"U-C-OLD-0": None, "U-C-OLD-1": None, "U-C-ERASED-0": None,
                       "U-C-RECENT-0": b"sealed reason", "U-C-OPEN-0": b"sealed reason"}
    assert [r.identity for r in await table(sqlite_db, ReportRow)] == [None]
    erased = {}
    for entry in await table(sqlite_db, AuditRecord):
        assert (entry.user_id, entry.action) == ("system:retention", "erase")
        erased.setdefault(entry.record, set()).update(entry.fields)
    assert erased == {"C-OLD": {*retention.ERASED, *retention.OVERRIDE_ERASED},
                      "C-ERASED": set(retention.OVERRIDE_ERASED)}
    assert (await retention.purge(sqlite_db, kept_for(identity=30), BOTH))["identity"] == 0


async def test_identity_is_kept_for_ever_by_default(sqlite_db):
    await add_case(sqlite_db, "C-OLD", "closed", days_ago=4000)
    assert "identity" not in await retention.purge(sqlite_db, kept_for(), BOTH)
    assert all(r.identity == b"sealed" for r in await table(sqlite_db, ReportRow))


async def test_old_keys_and_finished_deliveries_go_in_batches(sqlite_db, monkeypatch):
    monkeypatch.setattr(retention, "BATCH", 3)  # seven old keys: three transactions
    for i in range(7):
        await add_key(sqlite_db, f"old-{i}", days_ago=31)
    await add_key(sqlite_db, "young", days_ago=29)
    for status in ("delivered", "dead", "pending", "sending"):
        await add_delivery(sqlite_db, f"{status}-old", status, days_ago=91)
    await add_delivery(sqlite_db, "delivered-young", "delivered", days_ago=89)

    seen = []
    counts = await retention.purge(sqlite_db, kept_for(), BOTH,
                                   progress=lambda name, rows: seen.append((name, rows)))

    assert counts == {"idempotency": 7, "withdrawn": 0, "deliveries": 2}
    assert seen == [("idempotency", 3), ("idempotency", 6), ("idempotency", 7),
                    ("deliveries", 2)]
    assert [k.key for k in await table(sqlite_db, IdempotencyKey)] == ["young"]
    assert sorted(d.alert_id for d in await table(sqlite_db, Delivery)) == [
        "delivered-young", "pending-old", "sending-old"]  # unfinished rows are never purged


async def test_a_withdrawn_input_is_adopted_if_its_event_was_applied_else_removed(sqlite_db):
    """Refused with 503 two days ago: one whose event intake's consumer has applied since (the
    broker took it after all) is accepted; the other goes, with its sealed identity and key.
    One refused today whose event was applied is adopted too (should the consumer not have)."""
    for case_id, days_ago in (("C-LANDED", 2), ("C-REFUSED", 2), ("C-TODAY", 0), ("C-WAIT", 0)):
        await add_case(sqlite_db, case_id, "open", days_ago=days_ago, reports=1)
        await add_key(sqlite_db, f"k-{case_id}", days_ago=days_ago)
        async with sqlite_db.writes() as s, s.begin():
            await s.execute(update(ReportRow).where(ReportRow.case_id == case_id)
                            .values(published=False))
            s.add(WithdrawnInput(event_id=f"E-{case_id}-0", case_id=case_id, user_id="op",
                                 role="operator", key=f"k-{case_id}",
                                 withdrawn_at=NOW - timedelta(days=days_ago)))
    async with sqlite_db.writes() as s, s.begin():
        for event_id in ("E-C-LANDED-0", "E-C-TODAY-0"):
            s.add(ProcessedEvent(consumer=readmodel.CONSUMER, event_id=event_id,
                                 processed_at=NOW))

    assert (await retention.purge(sqlite_db, kept_for(), {"intake"}))["withdrawn"] == 3
    assert [(r.report_id, r.published) for r in await table(sqlite_db, ReportRow)] == [
        ("R-C-LANDED-0", True), ("R-C-TODAY-0", True), ("R-C-WAIT-0", False)]
    assert [k.key for k in await table(sqlite_db, IdempotencyKey)] == [
        "k-C-LANDED", "k-C-TODAY", "k-C-WAIT"]
    assert [w.event_id for w in await table(sqlite_db, WithdrawnInput)] == ["E-C-WAIT-0"]
    trail = sorted((r.record, r.outcome) for r in await table(sqlite_db, AuditRecord))
    assert trail == [("C-LANDED", "adopted"), ("C-TODAY", "adopted")]


async def test_a_service_purges_only_its_own_classes(sqlite_db):
    await add_key(sqlite_db, "old", days_ago=31)
    await add_delivery(sqlite_db, "delivered-old", "delivered", days_ago=91)
    assert await retention.purge(sqlite_db, kept_for(), {"notifier"}) == {"deliveries": 1}
    assert len(await table(sqlite_db, IdempotencyKey)) == 1


async def test_beacon_retention_run_counts_then_purges(kafka_bootstrap, tmp_path, sqlite_db):
    await add_case(sqlite_db, "C-OLD", "closed", days_ago=40)
    await add_key(sqlite_db, "old", days_ago=31)
    settings = make_settings(kafka_bootstrap, sqlite_db.url, retention_identity_days=30)

    dry = beacon(settings, "retention", "run", "--dry-run").stdout.splitlines()
    assert dry == ["identity: 2 rows due", "idempotency: 1 rows due", "withdrawn: 0 rows due",
                   "deliveries: 0 rows due"]
    assert len(await table(sqlite_db, IdempotencyKey)) == 1  # a dry run changes nothing

    done = beacon(settings, "retention", "run")
    assert done.stdout.splitlines() == [
        "identity: 2 rows purged", "idempotency: 1 rows purged", "withdrawn: 0 rows purged",
        "deliveries: 0 rows purged"]
    assert "identity: 2 rows..." in done.stderr  # progress, per batch
    assert not await table(sqlite_db, IdempotencyKey)


async def test_a_running_service_purges_at_start_and_then_on_its_interval(kafka_bootstrap,
                                                                          sqlite_db):
    await add_key(sqlite_db, "old", days_ago=31)
    settings = make_settings(kafka_bootstrap, sqlite_db.url, retention_interval_s=0.2)
    stack = await start_stack(settings, services=("intake",))
    try:
        async def purged():
            return not await table(sqlite_db, IdempotencyKey)

        await eventually(purged, timeout=10)
        await add_key(sqlite_db, "old-too", days_ago=31)  # the next interval takes it
        await eventually(purged, timeout=10)
    finally:
        await stack.stop()


async def test_the_notifier_will_not_start_if_alerts_outlive_their_delivery_rows(
        kafka_bootstrap, sqlite_db):
    """Purged delivery rows whose alerts are still on the topic would be delivered again by a
    replay; start-up refuses that configuration with a message that says what to change."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    settings = make_settings(kafka_bootstrap, sqlite_db.url)
    await runtime.preflight(settings, frozenset({"notifier"}))  # the broker's 7 days < 90 days
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(
            ConfigResourceType.TOPIC, settings.topic("beacon.alerts"),
            configs={"retention.ms": str(200 * 86_400_000)})])
    finally:
        await admin.close()

    async def kept_200_days():
        return (await kafka.topic_config(settings, "beacon.alerts"))["retention.ms"] == str(
            200 * 86_400_000)

    await eventually(kept_200_days, timeout=10)
    run = await asyncio.to_thread(subprocess.run, [BEACON, "run", "notifier"],
                                  env=beacon_env(settings), capture_output=True, text=True,
                                  timeout=120)
    assert run.returncode == 2
    assert "BEACON_RETENTION_DELIVERIES_DAYS is 90 days" in run.stderr
    assert "keeps alerts 200 days" in run.stderr
    await runtime.preflight(settings, frozenset({"intake"}))  # only the notifier's concern
    for days in (0, 365):  # kept for ever, or longer than the topic: no replay can repeat one
        longer = settings.model_copy(update={"retention_deliveries_days": days})
        await runtime.preflight(longer, frozenset({"notifier"}))
    with pytest.raises(ConfigError, match="keeps alerts 200 days"):
        await runtime.preflight(settings, frozenset({"notifier", "intake"}))
