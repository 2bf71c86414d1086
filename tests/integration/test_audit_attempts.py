"""Every attempt is in the audit trail, not only those that succeed (DOMAIN.md 7.3): a refusal by
role is recorded against the case it named, an unknown case as not found, an input the caller
was let make but that was rejected (409, 422) as rejected. IDs and field names, never values."""

from datetime import timedelta

from sqlalchemy import select

from services.common.audit import AuditRecord
from services.common.db import utcnow
from services.common.links import sign_link
from tests.integration.test_authorities import CP, _p1_case
from tests.support.reports import report

UNKNOWN = "C-NOSUCHCASE1"


async def _attempts(stack, record: str) -> list[tuple[str, str, str, str]]:
    async with stack.rt.db.reads() as session:
        rows = (await session.scalars(select(AuditRecord).where(AuditRecord.record == record)
                                      .order_by(AuditRecord.id))).all()
    return [(r.user_id, r.role, r.action, r.outcome) for r in rows]


async def test_a_refusal_by_role_is_recorded_against_the_case(stack):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
    async with stack.client("admin") as admin:
        assert (await admin.get(f"/api/v1/cases/{case_id}")).status_code == 403
        assert (await admin.get(f"/api/v1/cases/{case_id}/identity")).status_code == 403
        assert (await admin.get("/api/v1/cases")).status_code == 403  # names no case
    assert [a for a in await _attempts(stack, case_id) if a[0] == "test-admin"] == [
        ("test-admin", "admin", "denied", "denied")] * 2
    assert await _attempts(stack, "/api/v1/cases") == [("test-admin", "admin", "denied", "denied")]

    async with stack.client("auditor") as auditor:  # where an auditor looks for them
        by_case = (await auditor.get("/api/v1/audit", params={"case_id": case_id})).json()
        access = (await auditor.get(f"/api/v1/audit/cases/{case_id}/access")).json()
    assert [r["user_id"] for r in by_case["items"] if r["outcome"] == "denied"] == [
        "test-admin", "test-admin"]
    admin_access = next(p for p in access["accessed_by"] if p["user_id"] == "test-admin")
    assert admin_access["denied"] == 2


async def test_reading_an_unknown_case_is_recorded_as_not_found(stack):
    async with stack.client("operator") as api:
        missing = await api.get(f"/api/v1/cases/{UNKNOWN}")
        milestones = await api.get(f"/api/v1/cases/{UNKNOWN}/milestones")
    assert missing.status_code == milestones.status_code == 404
    assert missing.json() == {"detail": "no such case"}  # the answer itself is unchanged
    assert await _attempts(stack, UNKNOWN) == [
        ("test-operator", "operator", "read", "not_found")] * 2


async def test_a_follow_up_to_an_unknown_case_is_recorded(stack):
    async with stack.client("operator") as api:
        missing = await api.post(f"/api/v1/cases/{UNKNOWN}/updates", json={"publicity": "PA1"})
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        empty = await api.post(f"/api/v1/cases/{case_id}/updates", json={})
    assert missing.status_code == 404 and missing.json() == {"detail": "no such case"}
    assert empty.status_code == 422 and "nothing to update" in empty.text
    assert await _attempts(stack, UNKNOWN) == [("test-operator", "operator", "write", "not_found")]
    assert ("test-operator", "operator", "write", "rejected") in await _attempts(stack, case_id)
    async with stack.client("auditor") as auditor:  # a refused input changed nothing
        access = (await auditor.get(f"/api/v1/audit/cases/{case_id}/access")).json()
    operator = next(p for p in access["accessed_by"] if p["user_id"] == "test-operator")
    assert operator["failed"] == {"rejected": 1} and operator["actions"]["write"] == 1


async def test_an_authoritys_rejected_or_misaddressed_input_is_recorded(stack):
    case_id, _ = await _p1_case(stack)
    async with stack.client("authority") as me:
        to_itself = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": CP, "reason": "wrong_jurisdiction"})
        made_up = await me.post(f"/api/v1/cases/{case_id}/milestones",
                                json={"authority_id": CP, "milestone": "made_up"})
        unknown = await me.post(f"/api/v1/cases/{UNKNOWN}/acknowledgements",
                                json={"authority_id": CP})
    assert to_itself.status_code == made_up.status_code == 422
    # The shape of FastAPI's own 422s: the field's path and what is wrong.
    assert to_itself.json() == {"detail": [{"loc": ["body", "to_authority_id"], "type": "value_error",
                                            "msg": "transfer to another authority"}]}
    assert unknown.status_code == 404
    assert [a for a in await _attempts(stack, case_id) if a[0] == "test-authority"] == [
        ("test-authority", "authority", "write", "rejected")] * 2
    assert await _attempts(stack, UNKNOWN) == [
        ("test-authority", "authority", "write", "not_found")]


async def test_a_report_or_follow_up_with_invalid_codes_is_recorded(stack):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        elsewhere = await api.post("/api/v1/reports", json=report(
            location={"province_code": 1, "commune_code": 999999}))
        unknown_link = await api.post("/api/v1/reports", json=report(link_case_id=UNKNOWN))
        made_up = await api.post(f"/api/v1/cases/{case_id}/updates",
                                 json={"indicators": ["made_up"]})
    assert elsewhere.status_code == unknown_link.status_code == made_up.status_code == 422
    assert await _attempts(stack, "/api/v1/reports") == [
        ("test-operator", "operator", "write", "rejected")]
    assert await _attempts(stack, UNKNOWN) == [("test-operator", "operator", "write", "not_found")]
    assert ("test-operator", "operator", "write", "rejected") in await _attempts(stack, case_id)
    # Each names the failing field's path (privacy.md), never its value.
    async with stack.rt.db.reads() as session:
        fields = (await session.scalars(select(AuditRecord.fields).where(
            AuditRecord.outcome.in_(("rejected", "not_found")),
            AuditRecord.record.in_(("/api/v1/reports", UNKNOWN, case_id)))
            .order_by(AuditRecord.id))).all()
    assert fields == [["location.commune_code"], ["link_case_id"], ["indicators.0"]]


async def test_a_body_refused_before_any_handler_is_recorded_without_its_text(stack):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        too_old = report()
        too_old["children"][0]["age"] = 25
        too_old["Nguyen Van Canary"] = "x"  # an unexpected field: its name is the caller's text
        refused = await api.post("/api/v1/reports", json=too_old)
        follow_up = await api.post(f"/api/v1/cases/{case_id}/updates", json={"publicity": "PA9"})
    assert refused.status_code == follow_up.status_code == 422
    async with stack.rt.db.reads() as session:
        rows = (await session.scalars(select(AuditRecord).where(
            AuditRecord.record == "/api/v1/reports"))).all()
    assert [(r.user_id, r.action, r.outcome, r.fields) for r in rows] == [
        ("test-operator", "write", "rejected", ["(unexpected field)", "children.0.age"])]
    assert ("test-operator", "operator", "write", "rejected") in await _attempts(stack, case_id)


async def test_an_invalid_link_is_recorded_against_the_case_it_names(stack):
    case_id, _ = await _p1_case(stack)
    forged = sign_link(stack.base_url, case_id, "view", CP, utcnow() + timedelta(days=7),
                       "another-secret").rsplit("/", 1)[1]
    unknown = sign_link(stack.base_url, UNKNOWN, "view", CP, utcnow() + timedelta(days=7),
                        stack.rt.settings.secret("secret_key")).rsplit("/", 1)[1]
    async with stack.client() as anonymous:
        assert (await anonymous.get(f"/a/{forged}")).status_code == 404
        assert (await anonymous.post(f"/a/{forged}")).status_code == 404
        assert (await anonymous.get(f"/a/{unknown}")).status_code == 404
    assert [a for a in await _attempts(stack, case_id) if a[0] == "link:invalid"] == [
        ("link:invalid", "link", "read", "denied"), ("link:invalid", "link", "write", "denied")]
    assert await _attempts(stack, "/a/[token]") == [("link:invalid", "link", "read", "not_found")]
