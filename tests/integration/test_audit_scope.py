"""Auditors act within their scope (docs/admin.md): a case's trail and access report are refused
outside it as any case read is, recorded; only a national auditor reads the unscoped trail."""

from sqlalchemy import select

from services.common.audit import AuditRecord
from tests.integration.test_authorities import _p1_case, _user


async def _trail_of(stack, user_id: str) -> list[AuditRecord]:
    async with stack.rt.db.reads() as session:
        return list((await session.scalars(select(AuditRecord).where(
            AuditRecord.user_id == user_id).order_by(AuditRecord.id))).all())


def _shape(record: AuditRecord) -> tuple:
    return record.role, record.action, record.record, record.fields, record.outcome


async def test_an_auditor_outside_the_cases_jurisdiction_is_refused_and_audited(stack):
    case_id, _ = await _p1_case(stack)  # province 1, commune 4
    elsewhere = await _user(stack, "auditor-province2", "auditor", "province:2", [])
    async with stack.client(elsewhere) as api:
        # How every case endpoint refuses this auditor: the yardstick for the audit endpoints.
        overrides = await api.get(f"/api/v1/cases/{case_id}/overrides")
        access = await api.get(f"/api/v1/audit/cases/{case_id}/access")
        by_case = await api.get("/api/v1/audit", params={"case_id": case_id})
    assert overrides.status_code == 403, overrides.text
    assert access.status_code == 403, access.text
    assert by_case.status_code == 403, by_case.text
    assert "accessed_by" not in access.text and "items" not in by_case.text
    assert "outside your jurisdiction" in access.json()["detail"]

    # Each refusal recorded as the case endpoint records its own, and no export of the trail;
    # the overrides' names what it asked for (override.reason), which the audit's do not.
    shapes = [_shape(r) for r in await _trail_of(stack, elsewhere)]
    assert [s[:3] + s[4:] for s in shapes] == [("auditor", "denied", case_id, "denied")] * 3
    assert [s[3] for s in shapes] == [["override.reason"], [], []], shapes


async def test_a_non_national_auditor_must_name_a_case_in_its_jurisdiction(stack):
    case_id, _ = await _p1_case(stack)
    mine = await _user(stack, "auditor-province1", "auditor", "province:1", [])
    async with stack.client(mine) as api:
        unscoped = await api.get("/api/v1/audit")
        by_user = await api.get("/api/v1/audit", params={"user_id": "test-operator"})
        access = await api.get(f"/api/v1/audit/cases/{case_id}/access")
        by_case = await api.get("/api/v1/audit", params={"case_id": case_id})
    for refused in (unscoped, by_user):  # pack versions and authorities are in no jurisdiction
        assert refused.status_code == 403, refused.text
        assert "case_id" in refused.json()["detail"] and "national" in refused.json()["detail"]
    assert access.status_code == 200, access.text  # its own province's case
    assert by_case.status_code == 200, by_case.text
    assert {r["record"] for r in by_case.json()["items"]} == {case_id}

    trail = await _trail_of(stack, mine)
    assert [_shape(r) for r in trail] == [
        ("auditor", "denied", "/api/v1/audit", [], "denied"),
        ("auditor", "denied", "/api/v1/audit", [], "denied"),
        ("auditor", "export", case_id, ["access_report"], "ok"),
        ("auditor", "export", case_id, ["audit_trail"], "ok")]


async def test_a_national_auditor_reads_everything_as_before(stack):
    case_id, _ = await _p1_case(stack)
    async with stack.client("auditor") as api:
        access = await api.get(f"/api/v1/audit/cases/{case_id}/access")
        by_case = await api.get("/api/v1/audit", params={"case_id": case_id})
        everything = await api.get("/api/v1/audit")
        a_pack = await api.get("/api/v1/audit", params={"case_id": "no-such-pack-1"})
    for answer in (access, by_case, everything, a_pack):
        assert answer.status_code == 200, answer.text
    assert {p["user_id"] for p in access.json()["accessed_by"]} >= {"test-operator"}
    assert by_case.json()["total"] > 0 and everything.json()["total"] >= by_case.json()["total"]
    assert a_pack.json()["total"] == 0  # any record id, not only a case's
    assert [r.action for r in await _trail_of(stack, "test-auditor")] == ["export"] * 4
