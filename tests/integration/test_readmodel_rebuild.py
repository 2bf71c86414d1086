"""`beacon cases rebuild` replays the case events from Kafka into a read model equal to the live one."""

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from sqlalchemy import func, select

from schemas.events import Topics
from services.common import kafka
from services.intake import readmodel
from services.intake.rebuild import Incomplete, _partitions, rebuild
from services.intake.store import CaseAuthority, CaseCategory, CaseView, TimelineEntry
from tests.conftest import eventually
from tests.support.reports import report


async def _snapshot(db) -> dict:
    async with db.reads() as session:
        cases = {}
        for c in (await session.scalars(select(CaseView))).all():
            cases[c.case_id] = {
                "severity": c.severity, "publicity": c.publicity, "status": c.status,
                "acknowledged": c.acknowledged, "reports": (c.report_count, c.independent_reports),
                "updated_at": c.updated_at,  # the retention clock of a closed case
                "fingerprints": sorted(c.child_fingerprints), "sexes": c.child_sexes,
                # A key with no value yet and an absent key say the same thing.
                "targets": sorted(({k: v for k, v in t.items() if v is not None}
                                   for t in c.targets), key=lambda t: t["authority_id"]),
            }
        # In the order the API shows it: live and rebuilt must agree on it too.
        timeline = {case_id: [(t.kind, t.event_id) for t in await readmodel.timeline(session, case_id)]
                    for case_id in cases}
        assert sum(map(len, timeline.values())) == await session.scalar(
            select(func.count()).select_from(TimelineEntry))
        # With whether each still owes its acknowledgement, and by when (the case list's
        # ?acknowledged= and ?overdue=).
        routed = sorted((a.case_id, a.authority_id, a.awaiting, a.ack_due)
                        for a in (await session.scalars(select(CaseAuthority))).all())
        # Every category its reports gave (the case list's ?category=).
        categories = sorted((c.case_id, c.category)
                            for c in (await session.scalars(select(CaseCategory))).all())
    return {"cases": cases, "timeline": timeline, "routed": routed, "categories": categories}


async def test_rebuilt_read_model_equals_the_live_one(stack):
    async with stack.client("operator") as api:
        first = (await api.post("/api/v1/reports", json=report())).json()
        # A second call about the same child joins the case; another category opens a new one.
        await api.post("/api/v1/reports", json=report(reporter={"phone": "0911000111"}))
        second = (await api.post("/api/v1/reports", json=report(
            category="NEGLECT", indicators=[], children=[{"age": 9}]))).json()
        # A report of another category linked to it: the case has both.
        await api.post("/api/v1/reports", json=report(
            category="EMOTIONAL", indicators=[], link_case_id=second["case_id"],
            children=[{"age": 9}]))
        async with stack.client("supervisor") as sup:
            await sup.post(f"/api/v1/cases/{second['case_id']}/updates",
                           json={"publicity": "PA1"})
        async with stack.client("authority") as authority:
            await eventually(lambda: _targets(api, first["case_id"]))
            await authority.post(f"/api/v1/cases/{first['case_id']}/acknowledgements",
                                 json={"authority_id": "commune:4:child_protection"})

        async def settled():
            case = (await api.get(f"/api/v1/cases/{first['case_id']}")).json()
            other = (await api.get(f"/api/v1/cases/{second['case_id']}")).json()
            acked = any(t.get("acknowledged_at") for t in case["targets"])
            delivered = all(t.get("delivery") == "delivered" for t in case["targets"])
            return acked and delivered and other["publicity"] == "PA1"

        await eventually(settled)

    live = await _still(stack.rt.db)
    assert live["cases"][first["case_id"]]["reports"] == (2, 2)
    assert [k for c, k in live["categories"] if c == second["case_id"]] == ["EMOTIONAL", "NEGLECT"]
    await rebuild(stack.rt.settings)
    assert await _snapshot(stack.rt.db) == live


async def _still(db) -> dict:
    """The live model once it is still: receipts and escalations may still be arriving."""
    live = await _snapshot(db)
    for _ in range(30):
        await asyncio.sleep(1)
        again = await _snapshot(db)
        if again == live:
            break
        live = again
    return live


async def _targets(api, case_id):
    return (await api.get(f"/api/v1/cases/{case_id}")).json()["targets"]


async def test_a_rebuild_refuses_when_kafka_has_lost_events(stack):
    """Retention has taken a topic's first events: a rebuild would drop their cases, so it
    changes nothing and says which topic and partition."""
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        await eventually(lambda: _targets(api, case_id))
    before = await _still(stack.rt.db)
    topic = stack.rt.settings.topic(Topics.INPUTS)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.rt.settings.kafka_bootstrap)
    await admin.start()
    try:
        ends = {tp: offset for tp, offset in (await _ends(stack.rt.settings, topic)).items() if offset}
        await admin.delete_records({tp: RecordsToDelete(offset) for tp, offset in ends.items()})
    finally:
        await admin.close()
    with pytest.raises(Incomplete, match=rf"{topic}\[\d+\] starts at offset 1"):
        await rebuild(stack.rt.settings)
    assert await _snapshot(stack.rt.db) == before


async def _ends(settings, topic: str) -> dict:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        return await consumer.end_offsets(
            [TopicPartition(topic, p) for p in await _partitions(settings, topic)])
    finally:
        await consumer.stop()


async def test_a_rebuild_refuses_topics_recreated_empty(stack):
    """The broker's data lost: the topics come back empty, at offset 0, and a rebuild from them
    dropped every case, whose authorities could then not acknowledge it."""
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        await eventually(lambda: _targets(api, case_id))
    before = await _still(stack.rt.db)
    elsewhere = stack.rt.settings.model_copy(
        update={"topic_prefix": f"{stack.rt.settings.topic_prefix}empty."})
    await kafka.ensure_topics(elsewhere)
    with pytest.raises(Incomplete, match=rf"1 case\(s\) of the read model .*{case_id}"):
        await rebuild(elsewhere)
    assert await _snapshot(stack.rt.db) == before
