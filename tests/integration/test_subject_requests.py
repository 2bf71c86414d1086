"""A data subject's requests on the real stack (PDP Law 91/2025): a supervisor finds a person's
reports by the keyed hashes, within its jurisdiction, and erases one report's identity; the
case's hashes follow, so the erased child no longer joins a new report by name. Nobody else may,
every call is audited by field names and codes, and no value reaches a log line or the trail."""

from sqlalchemy import select

from services.common.audit import AuditRecord
from services.common.auth import Principal
from services.intake import subjects
from services.intake.identity import IdentityVault
from tests.integration.test_authorities import _user
from tests.integration.test_key_rotation import NEW, OLD, add_sealed
from tests.support.reports import CANARIES, report

SEARCH = "/api/v1/identity/search"
HCMC = {"province_code": 79, "commune_code": 26506}
SIBLING = {"age": 5, "sex": "female", "name": "Canaryname Thi Sister"}
OTHER_CALLER = {"name": "Canaryreporter Other", "phone": "0911222333",
                "relationship": "teacher", "consent_to_contact": True}


async def _submit(api, **overrides) -> dict:
    answer = await api.post("/api/v1/reports", json=report(**overrides))
    assert answer.status_code == 202, answer.text
    return answer.json()


async def _search(api, **body) -> list[dict]:
    answer = await api.post(SEARCH, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Cache-Control"] == "no-store"
    return answer.json()


async def _trail(stack, action: str | None = None) -> list[AuditRecord]:
    query = select(AuditRecord).order_by(AuditRecord.id)
    if action:
        query = query.where(AuditRecord.action == action)
    async with stack.rt.db.reads() as session:
        return list((await session.scalars(query)).all())


def _logged(capfd, caplog) -> str:
    """Beacon's own lines (structlog, as written) and the libraries' records (uvicorn's access
    log among them), the latter as logged, before redaction."""
    return "".join(capfd.readouterr()) + caplog.text


def _never_shown(logged: str, trail: list[AuditRecord], *values: str) -> None:
    for value in (*CANARIES, *values):
        assert value not in logged, value
        assert all(value not in f"{r.record} {r.fields} {r.outcome}" for r in trail), value


async def test_a_search_finds_a_persons_reports_within_the_callers_jurisdiction(
        stack, capfd, caplog):
    async with stack.client("operator") as api:
        hanoi = await _submit(api)
        saigon = await _submit(api, location=HCMC, children=[SIBLING])  # the same caller
        other = await _submit(api, children=[SIBLING], reporter=OTHER_CALLER)
    await _user(stack, "supervisor-hanoi", "supervisor", "province:1", [])

    async with stack.client("supervisor") as national:
        by_phone = await _search(national, reporter_phone="+84 987 654 321")
        by_name = await _search(national, child_name="  canaryname THI hidden ")
        by_both = await _search(national, reporter_phone="0987654321",
                                child_name="Canaryname Thi Sister")
        by_part = await _search(national, child_name="Hidden")
    assert by_phone == [  # newest first
        {"report_id": saigon["report_id"], "case_id": saigon["case_id"],
         "received_at": by_phone[0]["received_at"], "matched": ["reporter_phone"]},
        {"report_id": hanoi["report_id"], "case_id": hanoi["case_id"],
         "received_at": by_phone[1]["received_at"], "matched": ["reporter_phone"]}]
    assert by_phone[0]["received_at"] >= by_phone[1]["received_at"]
    assert [(r["report_id"], r["matched"]) for r in by_name] == [
        (hanoi["report_id"], ["child_name"])]
    assert [(r["report_id"], r["matched"]) for r in by_both] == [
        (other["report_id"], ["child_name"]),
        (saigon["report_id"], ["child_name", "reporter_phone"]),
        (hanoi["report_id"], ["reporter_phone"])]
    assert by_part == []  # a whole name, not part of one

    async with stack.client("supervisor-hanoi") as province:
        mine = await _search(province, reporter_phone="0987654321")
    assert [r["report_id"] for r in mine] == [hanoi["report_id"]]  # not Ho Chi Minh City's

    searches = await _trail(stack, "search_identity")
    assert [(r.user_id, r.record, r.fields) for r in searches] == [
        ("test-supervisor", SEARCH, ["reporter_phone"]),
        ("test-supervisor", SEARCH, ["child_name"]),
        ("test-supervisor", SEARCH, ["child_name", "reporter_phone"]),
        ("test-supervisor", SEARCH, ["child_name"]),
        ("supervisor-hanoi", SEARCH, ["reporter_phone"])]
    logged = _logged(capfd, caplog)
    assert SEARCH in logged  # the calls were logged (their paths), so the check means something
    _never_shown(logged, await _trail(stack), "987 654 321", "0911222333")


async def test_before_the_key_rotation_a_search_finds_hashes_under_the_previous_key(sqlite_db):
    await add_sealed(sqlite_db, IdentityVault(OLD), "C-A", ["Nguyễn Thị A", "Trần Văn B"])
    national = Principal("sup", "supervisor", "national")

    async def found_by(vault, **given):
        return [(f.report_id, f.matched) for f in await subjects.find(
            sqlite_db, vault, national, given.get("phone"), given.get("name"))]

    assert await found_by(IdentityVault(NEW, [OLD]), phone="0912000001", name="nguyen thi a") == [
        ("R-C-A-1", ["reporter_phone"]), ("R-C-A-0", ["child_name"])]
    assert await found_by(IdentityVault(NEW), phone="0912000001", name="nguyen thi a") == []
    assert await found_by(IdentityVault(OLD), name="Thị A") == []  # an ending is not the name
