"""`GET /api/v1/cases/{id}/identity` on the real stack: the sealed identity opened for the
hotline and for the authorities that must act, the reporter withheld where asked, everyone else
refused, every opening audited by field name, and nothing of it in a log line."""

import asyncio
import json
from types import SimpleNamespace
from unittest.mock import patch

from sqlalchemy import select

from services.common.audit import AuditRecord
from services.common.auth import Principal
from services.common.db import utcnow
from services.intake.api import deps
from services.intake.api.identity import _opened, must_act
from services.intake.identity import IdentityVault
from tests.integration.test_authorities import _p1_case, _user
from tests.support.reports import CANARIES, report

PROVINCE_CP = "province:1:child_protection"  # informed of the P1 case, not asked to act


async def _trail(stack, case_id: str) -> list[AuditRecord]:
    async with stack.rt.db.reads() as session:
        return list((await session.scalars(select(AuditRecord).where(
            AuditRecord.record == case_id, AuditRecord.action.in_(("read", "denied")))
            .order_by(AuditRecord.id))).all())


async def test_identity_is_opened_for_those_who_must_act_and_audited(stack, capfd):
    case_id, case = await _p1_case(stack)
    assert PROVINCE_CP in {t["authority_id"] for t in case["targets"] if t["role"] == "inform"}
    async with stack.client("operator") as api:  # a second caller, who asked not to be named
        second = report(link_case_id=case_id, confidential=True,
                        children=[{"age": 5, "sex": "female", "name": "Canaryname Thi Hidden"}],
                        reporter={"name": "Second Caller", "phone": "0911222333",
                                  "relationship": "teacher", "consent_to_contact": True})
        assert (await api.post("/api/v1/reports", json=second)).status_code == 202
        hotline = await api.get(f"/api/v1/cases/{case_id}/identity")
    assert hotline.status_code == 200 and hotline.headers["Cache-Control"] == "no-store"
    first, confidential = hotline.json()["reports"]
    assert first["children"][0]["name"] == "Canaryname Thi Hidden"
    assert first["narrative"].startswith("Canarytext")
    assert first["reporter"]["phone"] == "0987654321"
    assert confidential["reporter"]["name"] == "Second Caller"  # the hotline sees who called

    async with stack.client("authority") as authority:  # commune 4 police: must act
        seen = await authority.get(f"/api/v1/cases/{case_id}/identity")
    assert seen.status_code == 200
    first, confidential = seen.json()["reports"]
    assert first["children"][0]["name"] == "Canaryname Thi Hidden"
    assert first["reporter"]["phone"] == "0987654321"  # agreed to be contacted
    assert confidential["reporter"] is None and confidential["reporter_withheld"]
    assert confidential["children"]  # the child is still shown: they must find the child

    await _user(stack, "province-cp", "authority", "province:1", [PROVINCE_CP])
    for who in ("province-cp", "authority_elsewhere", "admin", "auditor"):
        async with stack.client(who) as other:
            refused = await other.get(f"/api/v1/cases/{case_id}/identity")
        assert refused.status_code == 403, who

    trail = await _trail(stack, case_id)
    reads = [r for r in trail if "identity.children" in r.fields]
    assert [r.user_id for r in reads] == ["test-operator", "test-authority"]
    assert all(r.fields == ["identity.children", "identity.narrative", "identity.reporter"]
               for r in reads)  # the names of what was shown, not the values
    # Refused on this case: the informed province, the unrouted commune, and the admin and the
    # auditor, refused by role (recorded against the case the path names).
    assert [r.user_id for r in trail if r.action == "denied"] == [
        "province-cp", "test-authority_elsewhere", "test-admin", "test-auditor"]
    logged = "".join(capfd.readouterr())
    for canary in (*CANARIES, "Second Caller", "0911222333"):
        assert canary not in logged
        assert all(canary not in str(r.fields) for r in trail)


async def test_no_such_case_is_404_and_no_token_is_401(stack):
    async with stack.client("operator") as api:
        assert (await api.get("/api/v1/cases/C-NOSUCHCASE1/identity")).status_code == 404
    async with stack.client() as anonymous:
        assert (await anonymous.get("/api/v1/cases/C-NOSUCHCASE1/identity")).status_code == 401
    # A token Beacon never issued names no one to audit; a guessing run shows in the log.
    with patch.object(deps, "log") as log:
        async with stack.client() as guessing:
            guessing.headers["Authorization"] = "Bearer bk_guessed"
            assert (await guessing.get("/api/v1/cases/C-NOSUCHCASE1/identity")).status_code == 401
    [said] = [c.kwargs for c in log.warning.call_args_list if c.args == ("token_unknown",)]
    assert said["path"] == "/api/v1/cases/C-NOSUCHCASE1/identity"


def test_a_reporter_sealed_before_the_flag_was_kept_is_withheld_from_authorities():
    vault = IdentityVault("k")
    old = {"children": [{"age": 5, "name": "A"}],
           "reporter": {"name": "B", "phone": "0911", "consent_to_contact": True}}
    row = SimpleNamespace(report_id="R-1", received_at=utcnow(),
                          identity=vault._fernet.encrypt(json.dumps(old).encode()))
    authority = Principal("u", "authority", "commune:4", ("commune:4:police",))
    operator = Principal("o", "operator", "national", ())
    assert _opened(vault, row, authority).reporter_withheld
    assert _opened(vault, row, operator).reporter == old["reporter"]
    row.identity = vault._fernet.encrypt(json.dumps({**old, "confidential": False}).encode())
    assert _opened(vault, row, authority).reporter == old["reporter"]


def test_an_authority_that_handed_the_case_on_no_longer_sees_identity():
    police = Principal("u", "authority", "commune:4", ("commune:4:police",))
    target = {"authority_id": "commune:4:police", "role": "act"}
    assert must_act(SimpleNamespace(targets=[target]), police)
    for gone in ({"transferred_to": "commune:5:police"}, {"released": True}, {"role": "inform"}):
        assert not must_act(SimpleNamespace(targets=[{**target, **gone}]), police), gone
    assert not must_act(SimpleNamespace(targets=[{**target, "authority_id": "commune:4:health"}]),
                        police)


async def test_refused_identity_requests_are_found_by_the_identity_field(stack):
    """An investigator lists who tried to see a child's or a reporter's identity with the field
    filter (`beacon audit query --field identity`): each refusal is there beside the openings,
    named an identity request (the field, never a value), whatever refused it."""
    case_id, _ = await _p1_case(stack)
    await _user(stack, "province-cp", "authority", "province:1", [PROVINCE_CP])
    # By role, outside the caller's authorities, informed but not asked to act.
    for who in ("admin", "auditor", "authority_elsewhere", "province-cp"):
        async with stack.client(who) as other:
            assert (await other.get(f"/api/v1/cases/{case_id}/identity")).status_code == 403
    async with stack.client("operator") as api:
        assert (await api.get("/api/v1/cases/C-NOSUCHCASE1/identity")).status_code == 404
        assert (await api.get(f"/api/v1/cases/{case_id}/identity")).status_code == 200
        assert (await api.get(f"/api/v1/cases/{case_id}")).status_code == 200  # not identity

    from typer.testing import CliRunner

    from services.cli import app as cli

    # The CLI's client is synchronous and the server runs in this loop: off the loop with it.
    result = await asyncio.to_thread(CliRunner().invoke, cli, [
        "audit", "query", "--field", "identity", "--url", stack.base_url,
        "--token", stack.tokens["auditor"]])
    assert result.exit_code == 0, result.output
    found = [(r["user_id"], r["action"], r["record"], r["fields"], r["outcome"])
             for r in json.loads(result.output)["items"]]
    shown = ["identity.children", "identity.narrative", "identity.reporter"]
    assert found == [
        ("test-admin", "denied", case_id, ["identity"], "denied"),
        ("test-auditor", "denied", case_id, ["identity"], "denied"),
        ("test-authority_elsewhere", "denied", case_id, ["identity"], "denied"),
        ("province-cp", "denied", case_id, ["identity"], "denied"),
        ("test-operator", "read", "C-NOSUCHCASE1", ["identity"], "not_found"),
        ("test-operator", "read", case_id, shown, "ok")]
