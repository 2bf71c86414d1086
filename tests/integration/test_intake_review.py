"""Intake's read model on PostgreSQL: two intake instances applying events to one case at the
same moment lose neither."""

import asyncio
import uuid
from datetime import UTC, datetime

from schemas.events import Envelope, ReportReceived
from schemas.reports import Location
from services.common.db import Database
from services.intake import readmodel
from services.intake.store import CaseView
from tests.conftest import migrate
from tests.integration.test_postgres import pg_database  # noqa: F401 (a fixture)


def _received(case_id: str, report_id: str, new_case: bool) -> Envelope:
    return Envelope.wrap(ReportReceived(
        case_id=case_id, report_id=report_id, new_case=new_case, received_at=datetime.now(UTC),
        channel="phone", category="NEGLECT", location=Location(province_code=1, commune_code=4),
        setting="home", child_ages=[3], independent=True), "beacon/intake")


async def test_two_instances_applying_reports_to_one_case_lose_neither_on_postgres(
        pg_database):  # noqa: F811
    await migrate(pg_database)
    a, b = Database(pg_database), Database(pg_database)  # two intake processes
    case_id = f"C-{uuid.uuid4().hex[:12].upper()}"
    try:
        async with a.writes() as session, session.begin():
            await readmodel.apply(session, _received(case_id, "R-1", True), ["fa"])
        a_wrote, a_may_commit = asyncio.Event(), asyncio.Event()

        async def first():
            async with a.writes() as session, session.begin():
                await readmodel.apply(session, _received(case_id, "R-2", False), ["fb"])
                await session.flush()
                a_wrote.set()
                await a_may_commit.wait()

        async def second():
            await a_wrote.wait()
            async with b.writes() as session, session.begin():
                # Unlocked, this read saw report_count 1 and wrote 2 over the first's 2.
                await readmodel.apply(session, _received(case_id, "R-3", False), ["fc"])

        tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
        await asyncio.sleep(0.5)  # the second is waiting for the first's lock by now
        a_may_commit.set()
        await asyncio.gather(*tasks)
        async with a.reads() as session:
            case = await session.get(CaseView, case_id)
        assert (case.report_count, case.independent_reports) == (3, 3)
        assert case.child_fingerprints == ["fa", "fb", "fc"]
    finally:
        await a.dispose()
        await b.dispose()
