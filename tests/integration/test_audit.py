"""The audit trail on the real broker: refused reads are in it, auditors query it, nobody
edits it."""

import asyncio
import json
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from services.common import audit
from services.common.audit import AuditRecord
from services.common.db import utcnow
from services.cli import app as cli
from services.intake.store import ReportRow
from tests.conftest import eventually
from tests.support.reports import report


async def _routed_case(stack) -> str:
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]

        async def routed():
            return (await api.get(f"/api/v1/cases/{case_id}")).json()["targets"]

        await eventually(routed)
    return case_id


async def test_authority_outside_jurisdiction_is_refused_and_audited(stack):
    case_id = await _routed_case(stack)
    async with stack.client("authority_elsewhere") as other:
        assert (await other.get(f"/api/v1/cases/{case_id}")).status_code == 403
    async with stack.client("authority") as mine:
        assert (await mine.get(f"/api/v1/cases/{case_id}")).status_code == 200

    async with stack.client("auditor") as auditor:
        by_case = (await auditor.get("/api/v1/audit", params={"case_id": case_id})).json()
        denied = [r for r in by_case["items"] if r["outcome"] == "denied"]
        assert [(r["user_id"], r["role"], r["action"]) for r in denied] == [
            ("test-authority_elsewhere", "authority", "denied")]
        assert all("Canary" not in str(r) for r in by_case["items"])  # IDs and field names only

        by_user = (await auditor.get("/api/v1/audit", params={
            "user_id": "test-authority_elsewhere",
            "since": (utcnow() - timedelta(minutes=5)).isoformat(),
            "until": (utcnow() + timedelta(minutes=1)).isoformat()})).json()
        assert {r["record"] for r in by_user["items"]} == {case_id}
        none_yet = (await auditor.get("/api/v1/audit", params={
            "case_id": case_id, "until": (utcnow() - timedelta(hours=1)).isoformat()})).json()
        assert none_yet["total"] == 0

        report_ = (await auditor.get(f"/api/v1/audit/cases/{case_id}/access")).json()
        people = {p["user_id"]: p for p in report_["accessed_by"]}
        assert people["test-authority_elsewhere"]["denied"] == 1
        assert people["test-authority"]["actions"]["read"] >= 1
        assert people["test-operator"]["actions"]["write"] == 1  # the report itself

    for role in ("operator", "authority", "admin"):  # the trail is the auditor's
        async with stack.client(role) as someone:
            assert (await someone.get("/api/v1/audit")).status_code == 403


async def test_trail_is_append_only(stack):
    await _routed_case(stack)
    async with stack.rt.db.writes() as session:
        row = (await session.scalars(select(AuditRecord).limit(1))).first()
        row.outcome = "ok-edited"
        with pytest.raises(PermissionError):
            await session.flush()
        await session.rollback()
    async with stack.rt.db.writes() as session:
        row = (await session.scalars(select(AuditRecord).limit(1))).first()
        await session.delete(row)
        with pytest.raises(PermissionError):
            await session.flush()
        await session.rollback()


async def test_trail_refuses_plain_sql_too(sqlite_db):
    """The database itself refuses: a client that bypasses the ORM cannot edit the trail."""
    async with sqlite_db.writes() as session, session.begin():
        await session.execute(text(
            "INSERT INTO audit_log (at, user_id, role, action, record, fields, outcome) "
            "VALUES (CURRENT_TIMESTAMP, 'u', 'auditor', 'read', 'C-1', '[]', 'ok')"))
    for statement in ("UPDATE audit_log SET outcome = 'edited'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with sqlite_db.writes() as session, session.begin():
                await session.execute(text(statement))
    async with sqlite_db.reads() as session:
        assert (await session.execute(text("SELECT outcome FROM audit_log"))).all() == [("ok",)]


async def test_a_date_or_a_time_without_a_zone_is_utc_and_bad_paging_is_422(stack):
    await _routed_case(stack)
    today = utcnow().date().isoformat()
    async with stack.client("auditor") as auditor:
        for since in (today, f"{today}T00:00:00", f"{today}T00:00:00Z"):
            answer = await auditor.get("/api/v1/audit", params={"since": since})
            assert answer.status_code == 200, (since, answer.text)
            assert answer.json()["total"] > 0
        tomorrow = (utcnow() + timedelta(days=1)).date().isoformat()
        assert (await auditor.get("/api/v1/audit", params={"since": tomorrow})).json()["total"] == 0
        for params in ({"offset": "99999999999999999999"}, {"offset": "-1"}, {"limit": "0"},
                       {"limit": "1001"}, {"until": "0001-01-01T00:00:00+05:00"}):
            answer = await auditor.get("/api/v1/audit", params=params)
            assert answer.status_code == 422, (params, answer.text)
            assert answer.json()["detail"][0]["loc"] == ["query", *params], answer.text

    from typer.testing import CliRunner
    # The CLI's client is synchronous and the server runs in this loop: off the loop with it.
    result = await asyncio.to_thread(CliRunner().invoke, cli, [
        "audit", "query", "--since", today, "--url", stack.base_url,
        "--token", stack.tokens["auditor"]])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["total"] > 0
    reads = await asyncio.to_thread(CliRunner().invoke, cli, [
        "audit", "query", "--action", "read", "--url", stack.base_url,
        "--token", stack.tokens["auditor"]])
    assert reads.exit_code == 0, reads.output
    assert {r["action"] for r in json.loads(reads.output)["items"]} == {"read"}


async def record_reads_of_one_case(db) -> None:
    """Reads of case C-1 as the endpoints record them, and as they did before the access
    report told identity openings apart (the records are the same but for `identity` alone)."""
    async with db.writes() as s, s.begin():
        audit.record(s, "op", "operator", "read", "C-1", ["case_id", "status"])  # the case
        audit.record(s, "op", "operator", "read", "C-1", ["identity.children", "identity.reporter"])
        audit.record(s, "cp", "authority", "read", "C-1", ["summary"])  # in a list of cases
        audit.record(s, "cp", "authority", "read", "C-1", ["identity.children"])
        audit.record(s, "sup", "supervisor", "read", "C-1", ["override.reason"])
        audit.record(s, "sup", "supervisor", "read", "C-1", ["identity"])  # all of it erased
        audit.record(s, "system:retention", "system", "erase", "C-1",
                     ["child_fingerprints", "identity", "reporter_fingerprint"])
        audit.record(s, "op", "operator", "read", "C-2", ["identity.children"])


async def check_identity_openings(db) -> None:
    """The access report counts and lists identity openings apart from reads of the case, and
    the trail filters to them by field name (SQLite here, PostgreSQL in test_postgres.py)."""
    await record_reads_of_one_case(db)
    async with db.reads() as s:
        people = {p["user_id"]: p for p in await audit.access_report(s, "C-1")}
        found = {(field, action): [r.user_id for r in (await audit.query(
            s, case_id="C-1", action=action, field=field))[1]]
            for field, action in (("identity", "read"), ("identity", None),
                                  ("identity.children", "read"), ("identity.child", None),
                                  ("%", None), ("override.reason", None))}
    assert {u: p["actions"] for u, p in people.items()} == {
        "op": {"read": 1, "read identity": 1}, "cp": {"read": 1, "read identity": 1},
        "sup": {"read override reason": 1, "read identity": 1}, "system:retention": {"erase": 1}}
    [opened] = people["op"]["identity_openings"]
    assert opened == {"at": people["op"]["last_at"],
                      "fields": ["identity.children", "identity.reporter"]}
    assert [o["fields"] for o in people["sup"]["identity_openings"]] == [["identity"]]
    assert people["system:retention"]["identity_openings"] == []  # an erasure opens nothing
    assert found == {("identity", "read"): ["op", "cp", "sup"],
                     ("identity", None): ["op", "cp", "sup", "system:retention"],
                     ("identity.children", "read"): ["op", "cp"],
                     ("identity.child", None): [], ("%", None): [],
                     ("override.reason", None): ["sup"]}


async def test_identity_openings_are_told_apart_from_reads(sqlite_db):
    await check_identity_openings(sqlite_db)


async def test_auditors_see_who_opened_a_cases_identity_and_when(stack):
    case_id = await _routed_case(stack)
    async with stack.client("operator") as api:
        assert (await api.get(f"/api/v1/cases/{case_id}")).status_code == 200
        assert (await api.get(f"/api/v1/cases/{case_id}/identity")).status_code == 200
        async with stack.rt.db.writes() as session, session.begin():  # as retention erases it
            await session.execute(update(ReportRow).where(ReportRow.case_id == case_id)
                                  .values(identity=None))
        erased = (await api.get(f"/api/v1/cases/{case_id}/identity")).json()
        assert [r["erased"] for r in erased["reports"]] == [True]
    async with stack.client("auditor") as auditor:
        people = {p["user_id"]: p for p in (await auditor.get(
            f"/api/v1/audit/cases/{case_id}/access")).json()["accessed_by"]}
        openings = (await auditor.get("/api/v1/audit", params={
            "case_id": case_id, "action": "read", "field": "identity"})).json()
    operator, shown = people["test-operator"], [
        "identity.children", "identity.narrative", "identity.reporter"]
    assert operator["actions"]["read identity"] == 2 and operator["actions"]["read"] >= 1
    assert [o["fields"] for o in operator["identity_openings"]] == [shown, ["identity"]]
    assert [(r["user_id"], r["fields"]) for r in openings["items"]] == [
        ("test-operator", shown), ("test-operator", ["identity"])]

    from typer.testing import CliRunner
    # The CLI's client is synchronous and the server runs in this loop: off the loop with it.
    result = await asyncio.to_thread(CliRunner().invoke, cli, [
        "audit", "query", "--case", case_id, "--action", "read", "--field", "identity",
        "--url", stack.base_url, "--token", stack.tokens["auditor"]])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["items"] == openings["items"]
