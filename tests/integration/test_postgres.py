"""PostgreSQL, the production database: the whole flow on it, and several instances sharing it:
escalation instances never fire a timer twice (row locks, SKIP LOCKED), outbox relays take
turns, and intake instances lose no read-model update."""

import asyncio
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio
from aiokafka.errors import KafkaTimeoutError
from sqlalchemy import func, select, text

from schemas.decisions import Decision, Target
from schemas.events import CaseDecided, Envelope, MilestoneRecorded, ReportReceived
from schemas.reports import Location
from services.common import kafka
from services.common.audit import AuditRecord
from services.common.db import Database, utcnow
from services.common.outbox import Relay, add
from services.escalation.handlers import Escalation
from services.intake import readmodel
from services.intake.store import CaseView, ReportRow, WithdrawnInput
from tests.conftest import eventually, make_settings, migrate, start_stack
from tests.integration.test_migrations import schema_drift
from tests.support.consumers import read_all
from tests.support.packs import fast_pack
from tests.support.reports import report


@pytest_asyncio.fixture
async def pg_database(postgres_url):
    """A fresh database per test on the shared PostgreSQL server."""
    name = f"beacon_{uuid.uuid4().hex[:10]}"
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


async def test_report_to_delivery_on_postgres(kafka_bootstrap, inbox, pg_database):
    settings = make_settings(kafka_bootstrap, pg_database, inbox)
    stack = await start_stack(settings)
    try:
        async with stack.client("operator") as api:
            answer = await api.post("/api/v1/reports", json=report())
            assert answer.status_code == 202, answer.text
            case_id = answer.json()["case_id"]

            async def delivered():
                case = (await api.get(f"/api/v1/cases/{case_id}")).json()
                return case["severity"] == "P1" and all(
                    t.get("delivery") == "delivered" for t in case["targets"])

            await eventually(delivered)
    finally:
        await stack.stop()


async def test_a_case_is_listed_by_a_linked_reports_category_on_postgres(kafka_bootstrap, inbox,
                                                                         pg_database):
    settings = make_settings(kafka_bootstrap, pg_database, inbox)
    stack = await start_stack(settings)
    try:
        async with stack.client("operator") as api:
            case_id = (await api.post("/api/v1/reports", json=report(
                category="NEGLECT", indicators=[]))).json()["case_id"]
            linked = await api.post("/api/v1/reports", json=report(
                category="SEX_ABUSE", indicators=[], link_case_id=case_id))
            assert linked.status_code == 202, linked.text

            async def listed():
                page = (await api.get("/api/v1/cases", params={"category": "SEX_ABUSE"})).json()
                return page["items"]

            [case] = await eventually(listed)
        assert (case["case_id"], case["category"], case["categories"]) == (
            case_id, "NEGLECT", ["NEGLECT", "SEX_ABUSE"])
    finally:
        await stack.stop()


async def test_two_escalation_instances_never_fire_a_timer_twice(
        kafka_bootstrap, inbox, pg_database, tmp_path, monkeypatch):
    fired = defaultdict(int)  # timers fired, per Escalation instance
    original = Escalation.fire_due

    async def counting(self, *args, **kwargs):
        n = await original(self, *args, **kwargs)
        fired[id(self)] += n
        return n

    monkeypatch.setattr(Escalation, "fire_due", counting)
    settings = make_settings(kafka_bootstrap, pg_database, inbox,
                             rulepack=str(fast_pack(tmp_path)))
    first = await start_stack(settings)
    second = await start_stack(settings, services=("escalation",))  # same group, same timers
    try:
        async with first.client("operator") as api:
            cases = [(await api.post("/api/v1/reports", json=report(
                children=[{"age": 5, "name": f"Child {i}"}]))).json()["case_id"]
                for i in range(40)]

        async def both_tiers_breached():  # commune, then province windows of 4 s each
            breached = {(e.subject, e.data["authority_id"].split(":")[0])
                        for e in await read_all(settings, "beacon.cases")
                        if e.type == "beacon.target.escalated" and e.data["step"] == "breach"}
            return all({(c, "commune"), (c, "province")} <= breached for c in cases)
        await eventually(both_tiers_breached, timeout=60, interval=1)
    finally:
        await second.stop()
        await first.stop()

    events = await read_all(settings, "beacon.cases")
    steps = defaultdict(set)
    for e in events:
        if e.type == "beacon.target.escalated":
            d = e.data
            steps[(e.subject, d["authority_id"], d["step"], d.get("fraction"))].add(e.id)
    instances = [id(first.rt.parts["escalation"]), id(second.rt.parts["escalation"])]
    assert all(fired[i] > 0 for i in instances), dict(fired)  # both instances fired timers
    assert all(len(ids) == 1 for ids in steps.values())  # and no step happened twice
    for case in cases:
        assert steps[(case, "commune:4:child_protection", "breach", 1.0)], case


async def test_identity_openings_are_told_apart_on_postgres(pg_database):
    """Its json type has no equality: the report groups and the trail filters all the same."""
    from tests.integration.test_audit import check_identity_openings

    await migrate(pg_database)
    db = Database(pg_database)
    try:
        await check_identity_openings(db)
    finally:
        await db.dispose()


async def test_audit_trail_is_append_only_on_postgres(pg_database):
    await migrate(pg_database)
    conn = await asyncpg.connect(pg_database.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(
            "INSERT INTO audit_log (at, user_id, role, action, record, fields, outcome) "
            "VALUES (now(), 'u', 'auditor', 'read', 'C-1', '[]', 'ok')")
        for statement in ("UPDATE audit_log SET outcome = 'edited'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
        assert await conn.fetchval("SELECT outcome FROM audit_log") == "ok"
    finally:
        await conn.close()


async def test_the_migrations_match_the_models_on_postgres(pg_database):
    assert await schema_drift(pg_database) == []


async def test_retention_purges_on_postgres(pg_database):
    from services import retention
    from services.common.db import Database
    from tests.integration import test_retention as t

    await migrate(pg_database)
    db = Database(pg_database)
    try:
        await t.add_case(db, "C-OLD", "closed", days_ago=40)
        await t.add_override(db, "C-OLD", 0)
        await t.add_key(db, "old", days_ago=31)
        await t.add_delivery(db, "dead-old", "dead", days_ago=91)
        await t.add_case(db, "C-INFO", "open", days_ago=40, reports=1, routed=False,
                         severity="P5")
        await t.add_case(db, "C-UNDECIDED", "open", days_ago=40, reports=1, routed=False,
                         severity=None)
        await t.add_case(db, "C-OPEN", "open", days_ago=40, reports=1)
        assert (await retention.purge(db, t.kept_for(identity=30), t.BOTH, dry_run=True))[
            "identity"] == 4
        assert await retention.purge(db, t.kept_for(identity=30), t.BOTH) == {
            "identity": 4, "idempotency": 1, "withdrawn": 0, "deliveries": 1}
        assert {r.report_id: r.identity for r in await t.table(db, t.ReportRow)} == {
            "R-C-OLD-0": None, "R-C-OLD-1": None, "R-C-INFO-0": None, "R-C-OPEN-0": b"sealed",
            "R-C-UNDECIDED-0": b"sealed"}
        assert [o.reason for o in await t.table(db, t.SeverityOverrideRow)] == [None]
    finally:
        await db.dispose()


async def test_a_subjects_reports_are_found_and_erased_on_postgres(kafka_bootstrap, inbox,
                                                                   pg_database):
    """The search reads the child hashes' JSON as text and the erasure locks the case row: as
    on SQLite (tests/integration/test_subject_requests.py)."""
    from tests.integration.test_subject_requests import SEARCH, SIBLING, _erasure

    stack = await start_stack(make_settings(kafka_bootstrap, pg_database, inbox))
    try:
        async with stack.client("operator") as api:
            first = (await api.post("/api/v1/reports", json=report())).json()
            case_id = first["case_id"]
            sister = (await api.post("/api/v1/reports", json=report(
                link_case_id=case_id, children=[SIBLING]))).json()
        both = {"child_name": "Canaryname Thi Hidden", "reporter_phone": "0987654321"}
        async with stack.client("supervisor") as sup:
            found = (await sup.post(SEARCH, json=both)).json()["reports"]
            assert [(r["report_id"], r["matched"]) for r in found] == [
                (sister["report_id"], ["reporter_phone"]),
                (first["report_id"], ["child_name", "reporter_phone"])]
            erased = await sup.post(_erasure(case_id, first["report_id"]),
                                    json={"reason": "entered_in_error"})
            assert erased.status_code == 200 and erased.json()["erased"]
            assert [r["report_id"] for r in (await sup.post(SEARCH, json=both)).json()[
                "reports"]] == [
                sister["report_id"]]
        async with stack.rt.db.reads() as session:
            case = await session.get(CaseView, case_id)
            kept = await session.get(ReportRow, sister["report_id"])
        assert (case.child_fingerprints, case.child_sexes) == (
            sorted(kept.child_fingerprints), ["female"])
    finally:
        await stack.stop()


async def test_relays_of_two_instances_take_turns_on_postgres(kafka_bootstrap, pg_database):
    """Two instances publishing neighbouring batches at once could put a case's events on Kafka
    out of order: while one relay publishes, the other's drain takes nothing."""
    settings = make_settings(kafka_bootstrap, pg_database)
    await migrate(pg_database)
    await kafka.ensure_topics(settings)
    topic = settings.topic("cases")
    first, second = Database(pg_database), Database(pg_database)
    producer = kafka.make_producer(settings)
    await producer.start()
    held, release = asyncio.Event(), asyncio.Event()

    class Held:
        """The first instance's producer: it holds the batch until the test lets it go."""

        async def send(self, *args, **kwargs):
            held.set()
            await release.wait()
            return await producer.send(*args, **kwargs)

    try:
        async with first.writes() as session, session.begin():
            for n in range(10):
                add(session, "test", topic, Envelope.wrap(MilestoneRecorded(
                    case_id="C-1", milestone=f"step-{n}", authority_id="a", by_user="u",
                    at=utcnow()), "test"))
        publishing = asyncio.create_task(Relay("test", first, Held(), batch=5).drain_once())
        await asyncio.wait_for(held.wait(), 10)
        later = Relay("test", second, producer, batch=5)
        assert await later.drain_once() == 0  # not the next five while the first five are out
        release.set()
        assert await asyncio.wait_for(publishing, 10) == 5
        assert await later.drain_once() == 5
    finally:
        release.set()
        await producer.stop()
        await first.dispose()
        await second.dispose()


def _received_event(case_id: str, report_id: str, new_case: bool) -> Envelope:
    return Envelope.wrap(ReportReceived(
        case_id=case_id, report_id=report_id, new_case=new_case, received_at=datetime.now(UTC),
        channel="phone", category="NEGLECT", location=Location(province_code=1, commune_code=4),
        setting="home", child_ages=[3], independent=True), "beacon/intake")


def _received(case_id: str, report_id: str, new_case: bool, fingerprint: str):
    """A report's event, with its child's name hash as the request that took it has it."""
    return _received_event(case_id, report_id, new_case), readmodel.Children([fingerprint])


async def test_two_intake_instances_applying_reports_to_one_case_lose_neither(pg_database):
    """The read model's case row is locked while an event is applied: another instance waits."""
    await migrate(pg_database)
    a, b = Database(pg_database), Database(pg_database)  # two intake processes
    case_id = f"C-{uuid.uuid4().hex[:12].upper()}"
    try:
        async with a.writes() as session, session.begin():
            await readmodel.apply(session, *_received(case_id, "R-1", True, "fa"))
        a_wrote, a_may_commit = asyncio.Event(), asyncio.Event()

        async def first():
            async with a.writes() as session, session.begin():
                await readmodel.apply(session, *_received(case_id, "R-2", False, "fb"))
                await session.flush()
                a_wrote.set()
                await a_may_commit.wait()

        async def second():
            await a_wrote.wait()
            async with b.writes() as session, session.begin():
                # Unlocked, this read saw report_count 1 and wrote 2 over the first's 2.
                await readmodel.apply(session, *_received(case_id, "R-3", False, "fc"))

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]

        async def second_waits_for_the_lock():
            async with a.reads() as session:
                return await session.scalar(select(func.count()).select_from(
                    text("pg_stat_activity")).where(text("wait_event_type = 'Lock'")))
        await eventually(second_waits_for_the_lock, timeout=10, interval=0.05)
        a_may_commit.set()
        await asyncio.gather(*tasks)
        async with a.reads() as session:
            case = await session.get(CaseView, case_id)
        assert (case.report_count, case.independent_reports) == (3, 3)
        assert case.child_fingerprints == ["fa", "fb", "fc"]
    finally:
        await a.dispose()
        await b.dispose()


async def test_a_decision_parked_while_another_instance_opens_its_case_is_applied(pg_database):
    """Instance A parks a decision (no case, as it sees it); B opens the case meanwhile and,
    not seeing A's uncommitted park, unparks nothing. Found stranded in a chaos run: every
    link of the case's authorities then said "not valid". The sweep applies it."""
    await migrate(pg_database)
    a, b = Database(pg_database), Database(pg_database)
    case_id = f"C-{uuid.uuid4().hex[:12].upper()}"
    decided = Envelope.wrap(CaseDecided(case_id=case_id, cause="beacon.report.received",
                                        decision=Decision(
        rulepack_version="v1", severity="P1", publicity="PA0", matched_rules=[],
        targets=[Target(tier="commune", agency="child_protection", role="act",
                        authority_id="commune:4:child_protection")])), "beacon/escalation")
    try:
        async with a.writes() as parking, parking.begin():
            await readmodel.apply(parking, decided)
            await parking.flush()
            async with b.writes() as opening, opening.begin():
                await readmodel.apply(opening, *_received(case_id, "R-1", True, "f"))
        async with b.reads() as session:
            assert (await session.get(CaseView, case_id)).severity is None  # stranded
        assert await readmodel.unpark_arrived(b) == 1
        async with b.reads() as session:
            assert (await session.get(CaseView, case_id)).severity == "P1"
    finally:
        await a.dispose()
        await b.dispose()


async def test_a_refused_report_whose_event_lands_is_adopted_on_postgres(kafka_bootstrap, inbox,
                                                                          pg_database,
                                                                          monkeypatch):
    """The lost acknowledgement on PostgreSQL, where the request and the consumer do not
    serialise as on SQLite: the report is adopted once, with one `adopted` record."""
    stack = await start_stack(make_settings(kafka_bootstrap, pg_database, inbox),
                              services=("intake",))
    taken, real_publish = [], kafka.publish_input

    async def ack_lost(*args):
        taken.append(args)
        raise KafkaTimeoutError()

    try:
        monkeypatch.setattr(kafka, "publish_input", ack_lost)
        async with stack.client("operator") as api:
            refused = await api.post("/api/v1/reports", json=report())
        monkeypatch.setattr(kafka, "publish_input", real_publish)
        assert refused.status_code == 503
        [(producer, topic, envelope)] = taken
        await real_publish(producer, topic, envelope)

        async def adopted():
            async with stack.rt.db.reads() as session:
                return await session.scalar(select(ReportRow.published).where(
                    ReportRow.event_id == envelope.id))
        await eventually(adopted)
        async with stack.rt.db.reads() as session:
            assert await session.scalar(select(func.count()).select_from(WithdrawnInput)) == 0
            assert (await session.scalars(select(AuditRecord.outcome).where(
                AuditRecord.record == envelope.subject).order_by(AuditRecord.id))).all() == [
                "withdrawn", "adopted"]
    finally:
        await stack.stop()


async def test_simultaneous_calls_to_two_intake_instances_open_one_case(kafka_bootstrap,
                                                                        pg_database):
    """Callers about one child reach two intake instances behind one address at once: one case,
    as with one instance, not a case per instance (the match is serialised across instances)."""
    settings = make_settings(kafka_bootstrap, pg_database)
    stacks = [await start_stack(settings, services=("intake",)) for _ in range(2)]
    try:
        async with stacks[0].client("operator") as one, stacks[1].client("operator") as two:
            bodies = [report(reporter={"phone": f"09120000{i:02d}"}) for i in range(6)]
            answers = await asyncio.gather(*[(one, two)[i % 2].post("/api/v1/reports", json=b)
                                             for i, b in enumerate(bodies)])
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        assert len({a.json()["case_id"] for a in answers}) == 1
        assert sum(a.json()["new_case"] for a in answers) == 1
    finally:
        for stack in stacks:
            await stack.stop()


@pytest.mark.parametrize(("paused", "before"), [("retention", "UPDATE cases"),
                                                ("erasure", "UPDATE reports")])
async def test_an_erasure_and_the_retention_purge_of_one_case_at_once_both_finish(
        pg_database, paused, before):
    """A supervisor erases a report of a closed case while the purge erases the case's
    identity, in two intake instances. Each takes the case row before the reports' rows, so
    the second waits for the first. The purge took the reports first: each then waited for
    the other, and PostgreSQL killed one ("deadlock detected"). One side is held just before
    `before`, holding what it took until then, while the other runs into it."""
    from sqlalchemy import event
    from sqlalchemy.util import await_only

    from services import retention
    from services.common.auth import Principal
    from services.intake import subjects
    from tests.integration import test_retention as t

    await migrate(pg_database)
    purging, erasing = Database(pg_database), Database(pg_database)  # two intake instances
    held, go_on = asyncio.Event(), asyncio.Event()

    def hold(conn, cursor, statement, *args):
        if statement.startswith(before) and not held.is_set():
            held.set()
            await_only(go_on.wait())

    try:
        await t.add_case(purging, "C-OLD", "closed", days_ago=40)  # reports R-C-OLD-0 and -1
        event.listen((purging if paused == "retention" else erasing).engine.sync_engine,
                     "before_cursor_execute", hold)

        async def purge():
            await retention.purge(purging, t.kept_for(identity=30), {"intake"})

        async def erase():
            return await subjects.erase(erasing, Principal("sup", "supervisor", "national"),
                                        "C-OLD", "R-C-OLD-0", "subject_request")

        first, second = (purge, erase) if paused == "retention" else (erase, purge)
        running = [asyncio.create_task(first())]
        await asyncio.wait_for(held.wait(), 10)
        running.append(asyncio.create_task(second()))

        await eventually(lambda: _lock_waits(purging), timeout=10, interval=0.05)
        go_on.set()
        await asyncio.wait_for(asyncio.gather(*running), 30)

        reports = await t.table(purging, ReportRow)
        assert [(r.identity, r.child_fingerprints) for r in reports] == [(None, [])] * 2
        async with purging.reads() as session:
            trail = (await session.execute(select(AuditRecord.user_id, AuditRecord.outcome)
                                           .where(AuditRecord.action == "erase")
                                           .order_by(AuditRecord.id))).all()
        # The erasure found the identity gone when the purge went first.
        assert [tuple(r) for r in trail] == (
            [("system:retention", "ok"), ("sup", "already_erased")] if paused == "retention"
            else [("sup", "ok"), ("system:retention", "ok")])
    finally:
        go_on.set()
        await purging.dispose()
        await erasing.dispose()


async def _lock_waits(db: Database) -> int:
    """How many sessions of this database wait for a lock: the held side has been run into."""
    async with db.reads() as session:
        return await session.scalar(select(func.count()).select_from(
            text("pg_stat_activity")).where(text(
                "wait_event_type = 'Lock' AND datname = current_database()")))


@pytest.mark.parametrize("before", [None, "UPDATE cases"], ids=["read", "case"])
async def test_an_erasure_during_a_key_rotation_stays_erased(pg_database, before):
    """`beacon keys rotate` re-seals a batch of reports while a supervisor erases one of them.
    The rotation re-seals only what still holds identity, and locks the batch's case rows
    first, as the erasure does. Before, it wrote the identity it had read back over an erasure
    made meanwhile (held just after reading its batch: `before` None), or deadlocked with it
    (held before `UPDATE cases`, the erasure waiting for a report the rotation held)."""
    from sqlalchemy import event
    from sqlalchemy.util import await_only

    from services.common.auth import Principal
    from services.intake import subjects
    from services.intake.identity import IdentityVault
    from services.intake.key_rotation import rotate
    from tests.integration.test_key_rotation import NEW, OLD, add_sealed

    await migrate(pg_database)
    rotating, erasing = Database(pg_database), Database(pg_database)
    held, go_on = asyncio.Event(), asyncio.Event()

    statements = []

    def hold(conn, cursor, statement, *args):
        statements.append(statement)  # the first one reads the batch
        if not held.is_set() and (statement.startswith(before) if before
                                  else len(statements) == 2):
            held.set()
            await_only(go_on.wait())

    try:
        await add_sealed(rotating, IdentityVault(OLD), "C-A", ["Nguyễn Thị A", "Lê Văn C"])
        event.listen(rotating.engine.sync_engine, "before_cursor_execute", hold)
        rotation = asyncio.create_task(rotate(rotating, IdentityVault(NEW, [OLD])))
        await asyncio.wait_for(held.wait(), 10)
        erasure = asyncio.create_task(subjects.erase(
            erasing, Principal("sup", "supervisor", "national"), "C-A", "R-C-A-0",
            "subject_request"))

        async def erased_or_waiting():
            return erasure.done() or await _lock_waits(erasing)
        await eventually(erased_or_waiting, timeout=10, interval=0.05)
        go_on.set()
        assert await asyncio.wait_for(erasure, 30) is True
        await asyncio.wait_for(rotation, 30)

        reports = {r.report_id: r for r in await rows_of(rotating, ReportRow)}
        gone, kept = reports["R-C-A-0"], reports["R-C-A-1"]
        assert (gone.identity, gone.reporter_fingerprint, gone.child_fingerprints) == (
            None, None, [])
        assert IdentityVault(NEW).open(kept.identity)["children"][0]["name"] == "Lê Văn C"
        [case] = await rows_of(rotating, CaseView)
        assert case.child_fingerprints == sorted(kept.child_fingerprints)  # not the erased child
    finally:
        go_on.set()
        await rotating.dispose()
        await erasing.dispose()


async def rows_of(db, model):
    async with db.reads() as session:
        return (await session.scalars(select(model))).all()


async def test_an_override_reason_purged_during_a_key_rotation_stays_erased(pg_database):
    """The retention purge erases a closed case's override reason after the rotation read it
    and before it wrote it back re-sealed: it stays erased."""
    from sqlalchemy import event
    from sqlalchemy.util import await_only

    from services import retention
    from services.intake.identity import IdentityVault
    from services.intake.key_rotation import rotate
    from services.intake.store import SeverityOverrideRow
    from tests.integration import test_retention as t
    from tests.integration.test_key_rotation import NEW, OLD

    await migrate(pg_database)
    rotating, purging = Database(pg_database), Database(pg_database)
    held, go_on = asyncio.Event(), asyncio.Event()

    def hold(conn, cursor, statement, *args):
        if statement.startswith("UPDATE severity_overrides") and not held.is_set():
            held.set()
            await_only(go_on.wait())

    try:
        await t.add_case(rotating, "C-OLD", "closed", days_ago=40, reports=0)
        await t.add_override(rotating, "C-OLD", 0, IdentityVault(OLD).seal_text("Canary why"))
        event.listen(rotating.engine.sync_engine, "before_cursor_execute", hold)
        rotation = asyncio.create_task(rotate(rotating, IdentityVault(NEW, [OLD])))
        await asyncio.wait_for(held.wait(), 10)
        assert await retention.purge(purging, t.kept_for(identity=30), {"intake"}) == {
            "identity": 1, "idempotency": 0, "withdrawn": 0}
        go_on.set()
        await asyncio.wait_for(rotation, 30)
        assert [o.reason for o in await rows_of(rotating, SeverityOverrideRow)] == [None]
    finally:
        go_on.set()
        await rotating.dispose()
        await purging.dispose()
