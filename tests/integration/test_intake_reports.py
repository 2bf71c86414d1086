"""Operators' reports: duplicates join their case, follow-ups re-decide, scopes hold."""

from datetime import timedelta

from sqlalchemy import select, update

from services.common.db import utcnow
from services.intake import submission
from services.intake.store import ReportRow
from tests.conftest import eventually
from tests.support.reports import report


async def _case(api, case_id):
    return (await api.get(f"/api/v1/cases/{case_id}")).json()


async def test_a_second_report_about_the_same_child_joins_the_case(stack):
    async with stack.client("operator") as api:
        first = (await api.post("/api/v1/reports", json=report())).json()
        # Another caller, the same child (the name spelt without accents): the same case.
        same = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 5, "name": "canaryname thi hidden"}],
            reporter={"phone": "0911222333"}))).json()
        # The same caller again: linked, but not an independent report.
        again = (await api.post("/api/v1/reports", json=report())).json()
        # Another child in the same commune and category: a new case.
        other = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 7, "name": "Someone Else"}]))).json()
        # An operator may link by case id whatever the matching says.
        linked = (await api.post("/api/v1/reports", json=report(
            category="NEGLECT", indicators=[], link_case_id=first["case_id"]))).json()

        assert first["new_case"] and other["new_case"]
        assert same["case_id"] == again["case_id"] == linked["case_id"] == first["case_id"]
        assert same["linked"] and not same["new_case"]
        assert other["case_id"] != first["case_id"]
        case = await _case(api, first["case_id"])
        assert case["report_count"] == 4
        assert case["independent_reports"] == 2  # the first caller twice, and linked, count once


async def test_correlated_reports_raise_publicity(stack):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report(
            category="BULLYING", setting="school", indicators=[]))).json()["case_id"]
        for phone in ("0911000001", "0911000002"):
            await api.post("/api/v1/reports", json=report(
                category="BULLYING", setting="school", indicators=[],
                reporter={"phone": phone}))

        async def raised():
            case = await _case(api, case_id)
            return case if case["publicity"] == "PA1" else None

        case = await eventually(raised)  # 3 independent reports within 24 h: at least PA1
        assert case["independent_reports"] == 3


async def test_follow_up_and_override(stack):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report(
            category="NEGLECT", indicators=[], children=[{"age": 9}]))).json()["case_id"]
        await eventually(lambda: _severity(api, case_id, "P3"))
        # New facts re-decide: an abandoned infant is P1.
        answer = await api.post(f"/api/v1/cases/{case_id}/updates",
                                json={"indicators": ["abandoned_infant"]})
        assert answer.status_code == 202, answer.text
        await eventually(lambda: _severity(api, case_id, "P1"))
        # Only a supervisor may override severity, and only with a reason.
        refused = await api.post(f"/api/v1/cases/{case_id}/updates", json={
            "severity_override": {"severity": "P2", "reason": "checked by phone"}})
        assert refused.status_code == 403
    async with stack.client("supervisor") as sup:
        no_reason = await sup.post(f"/api/v1/cases/{case_id}/updates",
                                   json={"severity_override": {"severity": "P2"}})
        assert no_reason.status_code == 422 and "reason" in no_reason.text
        ok = await sup.post(f"/api/v1/cases/{case_id}/updates", json={
            "severity_override": {"severity": "P2", "reason": "checked by phone"}})
        assert ok.status_code == 202
        await eventually(lambda: _severity(sup, case_id, "P2"))
        missing = await sup.post("/api/v1/cases/C-NOSUCHCASE00/updates", json={"publicity": "PA1"})
        assert missing.status_code == 404


async def _severity(api, case_id, level):
    return (await _case(api, case_id))["severity"] == level


async def test_case_list_is_scoped_and_filtered(stack):
    async with stack.client("operator") as api:
        mine = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        elsewhere = (await api.post("/api/v1/reports", json=report(
            location={"province_code": 79, "commune_code": 26506}))).json()["case_id"]
        await eventually(lambda: _severity(api, mine, "P1"))
        await eventually(lambda: _severity(api, elsewhere, "P1"))
        listed = (await api.get("/api/v1/cases", params={"severity": "P1"})).json()
        ids = {c["case_id"] for c in listed["items"]}
        assert {mine, elsewhere} <= ids and listed["total"] >= 2
        page = (await api.get("/api/v1/cases", params={"limit": 1})).json()
        assert len(page["items"]) == 1
    async with stack.client("authority") as authority:  # commune 4's authorities only
        ids = {c["case_id"] for c in (await authority.get("/api/v1/cases")).json()["items"]}
        assert mine in ids and elsewhere not in ids


async def test_a_retry_finishes_a_first_attempt_that_died_after_its_publish(stack, monkeypatch):
    """A crash between the publish and its record leaves the report pending, its event on
    Kafka. A retry while the first attempt may still be publishing gets 409 and Retry-After;
    a later one finishes it and gets its answer. One report, one case, either way."""
    real = stack.rt.inputs

    async def dies_after_publish(item):
        if isinstance(item, submission.Published):
            raise RuntimeError("the process died here")
        return await real(item)

    body, key = report(), {"Idempotency-Key": "k-crash"}
    async with stack.client("operator") as api:
        monkeypatch.setattr(stack.rt, "inputs", dies_after_publish)
        first = await api.post("/api/v1/reports", json=body, headers=key)
        monkeypatch.setattr(stack.rt, "inputs", real)
        assert first.status_code == 500

        soon = await api.post("/api/v1/reports", json=body, headers=key)
        assert soon.status_code == 409, soon.text
        assert soon.headers["Retry-After"] == "5"

        async with stack.rt.db.writes() as session, session.begin():  # time passes
            await session.execute(update(ReportRow).values(created_at=utcnow() - timedelta(minutes=1)))
        later = await api.post("/api/v1/reports", json=body, headers=key)
        assert later.status_code == 202, later.text
        async with stack.rt.db.reads() as session:
            rows = (await session.scalars(select(ReportRow))).all()
        assert [(r.report_id, r.published) for r in rows] == [(later.json()["report_id"], True)]

        async def applied_once():
            case = await _case(api, later.json()["case_id"])
            return case.get("report_count") == 1 and case
        await eventually(applied_once)
        again = await api.post("/api/v1/reports", json=body, headers=key)
        assert again.json() == later.json()
