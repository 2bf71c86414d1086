"""A data subject's requests on the real stack (PDP Law 91/2025): a supervisor finds a person's
reports by the keyed hashes, within its jurisdiction, and erases one report's identity; the
case's hashes follow, so the erased child no longer joins a new report by name. Nobody else may,
every call is audited by field names and codes, and no value reaches a log line or the trail."""

from sqlalchemy import select

from services.common.audit import AuditRecord, access_report
from services.common.auth import Principal
from services.intake import subjects
from services.intake.identity import IdentityVault
from services.intake.store import CaseView, ReportRow
from services.retention import ERASED
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
    assert answer.json()["more"] is False
    return answer.json()["reports"]


def _erasure(case_id: str, report_id: str) -> str:
    return f"/api/v1/cases/{case_id}/reports/{report_id}/erasure"


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
    assert [(r.user_id, r.record, r.fields) for r in searches if r.record == SEARCH] == [
        ("test-supervisor", SEARCH, ["reporter_phone"]),
        ("test-supervisor", SEARCH, ["child_name"]),
        ("test-supervisor", SEARCH, ["child_name", "reporter_phone"]),
        ("test-supervisor", SEARCH, ["child_name"]),
        ("supervisor-hanoi", SEARCH, ["reporter_phone"])]
    # And under each case a search revealed: its access report shows who found it, and how
    # (a phone number looked up to its case left no trace there; the verification review).
    assert sorted((r.user_id, r.record, tuple(r.fields)) for r in searches
                  if r.record != SEARCH) == sorted([
        ("test-supervisor", hanoi["case_id"], ("reporter_phone",)),
        ("test-supervisor", saigon["case_id"], ("reporter_phone",)),
        ("test-supervisor", hanoi["case_id"], ("child_name",)),
        ("test-supervisor", other["case_id"], ("child_name",)),
        ("test-supervisor", saigon["case_id"], ("child_name", "reporter_phone")),
        ("test-supervisor", hanoi["case_id"], ("reporter_phone",)),
        ("supervisor-hanoi", hanoi["case_id"], ("reporter_phone",))])
    logged = _logged(capfd, caplog)
    assert SEARCH in logged  # the calls were logged (their paths), so the check means something
    _never_shown(logged, await _trail(stack), "987 654 321", "0911222333")


async def test_only_a_supervisor_may_search_or_erase_and_bodies_are_checked(
        stack, capfd, caplog):
    async with stack.client("operator") as api:
        case = await _submit(api)
    erasure = _erasure(case["case_id"], case["report_id"])
    for who in ("operator", "authority", "admin", "auditor"):
        async with stack.client(who) as other:
            assert (await other.post(SEARCH, json={"reporter_phone": "0987654321"})
                    ).status_code == 403, who
            assert (await other.post(erasure, json={"reason": "subject_request"})
                    ).status_code == 403, who
    async with stack.client() as anonymous:
        assert (await anonymous.post(SEARCH, json={"child_name": "An"})).status_code == 401

    async with stack.client("supervisor") as sup:
        for body in ({}, {"reporter_phone": "no digits"}, {"child_name": " - "},
                     {"phone": "0987654321"}, {"reporter_phone": None, "child_name": None}):
            refused = await sup.post(SEARCH, json=body)
            assert refused.status_code == 422, body
            assert "0987654321" not in refused.text and "no digits" not in refused.text
        # A closed list of reasons: free text could name the child.
        free_text = await sup.post(erasure, json={"reason": "Canaryname asked us"})
        assert free_text.status_code == 422 and "Canaryname" not in free_text.text
        assert (await sup.post(erasure, json={})).status_code == 422

    denied = [r for r in await _trail(stack) if r.outcome == "denied"]
    assert sorted((r.user_id, r.record) for r in denied) == sorted(
        (f"test-{who}", record) for who in ("operator", "authority", "admin", "auditor")
        for record in (SEARCH, case["case_id"]))
    _never_shown(_logged(capfd, caplog), await _trail(stack), "no digits")


async def test_an_erased_report_names_nobody_and_its_child_no_longer_joins_the_case(
        stack, capfd, caplog):
    async with stack.client("operator") as api:
        first = await _submit(api)
        case_id = first["case_id"]
        sister = await _submit(api, link_case_id=case_id, children=[SIBLING],
                               reporter=OTHER_CALLER)
    hidden = stack.rt.vault.name_hashes("Canaryname Thi Hidden")[0]
    async with stack.rt.db.reads() as session:
        case = await session.get(CaseView, case_id)
        kept = await session.get(ReportRow, sister["report_id"])
    assert hidden in case.child_fingerprints and hidden not in kept.child_fingerprints

    async with stack.client("supervisor") as sup:
        answer = await sup.post(_erasure(case_id, first["report_id"]),
                                json={"reason": "subject_request"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"case_id": case_id, "report_id": first["report_id"],
                                 "reason": "subject_request", "erased": True}
        again = await sup.post(_erasure(case_id, first["report_id"]),
                               json={"reason": "subject_request"})
        assert again.status_code == 200 and again.json()["erased"] is False
        shown = (await sup.get(f"/api/v1/cases/{case_id}/identity")).json()["reports"]
        assert await _search(sup, reporter_phone="0987654321") == []
        assert await _search(sup, child_name="Canaryname Thi Hidden") == []
        assert [r["report_id"] for r in await _search(sup, child_name=SIBLING["name"])] == [
            sister["report_id"]]
        timeline = (await sup.get(f"/api/v1/cases/{case_id}")).json()["timeline"]

    async with stack.rt.db.reads() as session:
        erased = await session.get(ReportRow, first["report_id"])
        case = await session.get(CaseView, case_id)
    assert (erased.identity, erased.reporter_fingerprint, erased.child_fingerprints,
            erased.child_sexes) == (None, None, [], [])
    assert case.child_fingerprints == sorted(kept.child_fingerprints)  # the sister's only
    assert case.child_sexes == ["female"]
    assert [(r["report_id"], r["erased"], bool(r["children"])) for r in shown] == [
        (first["report_id"], True, False), (sister["report_id"], False, True)]
    received = [e["detail"]["report_id"] for e in timeline if e["kind"] == "report_received"]
    assert received == [first["report_id"], sister["report_id"]]  # the case's story stays

    # The child called about again: no longer the case's by name, so a case of its own.
    async with stack.client("operator") as api:
        assert (await _submit(api))["new_case"] is True

    erasures = await _trail(stack, "erase")
    assert [(r.user_id, r.role, r.record, r.fields, r.outcome) for r in erasures] == [
        ("test-supervisor", "supervisor", case_id,
         sorted([*ERASED, "reason:subject_request", f"report:{first['report_id']}"]), "ok"),
        ("test-supervisor", "supervisor", case_id,
         sorted(["reason:subject_request", f"report:{first['report_id']}"]), "already_erased")]
    # The access report counts the second as an attempt that did nothing, not as an erasure.
    async with stack.rt.db.reads() as session:
        [supervisor] = [p for p in await access_report(session, case_id)
                        if p["user_id"] == "test-supervisor"]
    assert supervisor["actions"]["erase"] == 1
    assert supervisor["failed"] == {"already_erased": 1}
    _never_shown(_logged(capfd, caplog), await _trail(stack), "Sister", "0911222333")


async def test_an_erasure_outside_the_case_or_the_jurisdiction_is_refused_and_recorded(stack):
    async with stack.client("operator") as api:
        first = await _submit(api)
        other = await _submit(api, location=HCMC)
    await _user(stack, "supervisor-saigon", "supervisor", "province:79", [])
    reason = {"reason": "court_order"}
    async with stack.client("supervisor") as sup:
        assert (await sup.post(_erasure(first["case_id"], "R-NOSUCHREPORT"), json=reason)
                ).status_code == 404
        assert (await sup.post(_erasure(first["case_id"], other["report_id"]), json=reason)
                ).status_code == 404  # a report of another case
        assert (await sup.post(_erasure("C-NOSUCHCASE00", first["report_id"]), json=reason)
                ).status_code == 404
    async with stack.client("supervisor-saigon") as elsewhere:
        assert (await elsewhere.post(_erasure(first["case_id"], first["report_id"]),
                                     json=reason)).status_code == 403
        assert (await elsewhere.post(_erasure(other["case_id"], other["report_id"]),
                                     json={"reason": "entered_in_error"})).json()["erased"]

    async with stack.rt.db.reads() as session:
        untouched = await session.get(ReportRow, first["report_id"])
    assert untouched.identity is not None and untouched.child_fingerprints
    trail = [(r.user_id, r.action, r.record, r.fields, r.outcome) for r in await _trail(stack)
             if r.action in ("erase", "denied")]
    asked = ["identity", "reason:court_order"]  # an erasure of identity, refused
    assert trail == [
        ("test-supervisor", "erase", first["case_id"], asked, "not_found"),
        ("test-supervisor", "erase", first["case_id"], asked, "not_found"),
        ("test-supervisor", "erase", "C-NOSUCHCASE00", asked, "not_found"),
        ("supervisor-saigon", "denied", first["case_id"], asked, "denied"),
        ("supervisor-saigon", "erase", other["case_id"],
         sorted([*ERASED, "reason:entered_in_error", f"report:{other['report_id']}"]), "ok")]


async def test_refused_searches_and_erasures_are_found_by_the_identity_field(stack):
    """An investigator filtering the trail by field (`beacon audit query --field identity`)
    finds the refused searches and erasures as identity requests, with no value in them."""
    async with stack.client("operator") as api:
        case = await _submit(api)
    case_id, erasure = case["case_id"], _erasure(case["case_id"], case["report_id"])
    await _user(stack, "supervisor-saigon", "supervisor", "province:79", [])
    async with stack.client("operator") as operator:
        assert (await operator.post(SEARCH, json={"reporter_phone": "0987654321"})
                ).status_code == 403
        assert (await operator.post(erasure, json={"reason": "subject_request"})
                ).status_code == 403
    async with stack.client("supervisor-saigon") as elsewhere:
        assert (await elsewhere.post(erasure, json={"reason": "court_order"})).status_code == 403
    async with stack.client("supervisor") as sup:
        assert (await sup.post(_erasure(case_id, "R-NOSUCHREPORT"),
                               json={"reason": "entered_in_error"})).status_code == 404
    async with stack.client("auditor") as auditor:
        answer = await auditor.get("/api/v1/audit", params={"field": "identity"})
    assert answer.status_code == 200, answer.text
    assert [(r["user_id"], r["action"], r["record"], r["fields"], r["outcome"])
            for r in answer.json()["items"]] == [
        ("test-operator", "denied", SEARCH, ["identity"], "denied"),
        ("test-operator", "denied", case_id, ["identity"], "denied"),
        ("supervisor-saigon", "denied", case_id, ["identity", "reason:court_order"], "denied"),
        ("test-supervisor", "erase", case_id, ["identity", "reason:entered_in_error"],
         "not_found")]
    _never_shown("", await _trail(stack), "987654321")


async def test_before_the_key_rotation_a_search_finds_hashes_under_the_previous_key(sqlite_db):
    await add_sealed(sqlite_db, IdentityVault(OLD), "C-A", ["Nguyễn Thị A", "Trần Văn B"])
    national = Principal("sup", "supervisor", "national")

    async def found_by(vault, **given):
        found, more = await subjects.find(sqlite_db, vault, national, given.get("phone"),
                                          given.get("name"))
        assert not more
        return [(f.report_id, f.matched) for f in found]

    assert await found_by(IdentityVault(NEW, [OLD]), phone="0912000001", name="nguyen thi a") == [
        ("R-C-A-1", ["reporter_phone"]), ("R-C-A-0", ["child_name"])]
    assert await found_by(IdentityVault(NEW), phone="0912000001", name="nguyen thi a") == []
    assert await found_by(IdentityVault(OLD), name="Thị A") == []  # an ending is not the name


async def test_erasing_reports_keeps_what_the_case_knows_of_its_childs_sex(stack):
    """A case of three calls about a boy of 10: after two were erased the case knew no sex at all
    (an erased report read as one from before sexes were kept), and an unnamed girl of 11 joined
    his case (found by the verification review). A rebuild did the same."""
    place = {"location": {"province_code": 1, "commune_code": 148}, "category": "NEGLECT",
             "indicators": []}
    boy = {"age": 10, "sex": "male"}
    async with stack.client("operator") as api:
        first = await _submit(api, **place, children=[boy], reporter={"phone": "0911000401"})
        case_id = first["case_id"]
        calls = [first] + [await _submit(api, **place, children=[boy], link_case_id=case_id,
                                          reporter={"phone": f"091100040{n}"}) for n in (2, 3)]
    async with stack.client("supervisor") as sup:
        for call in calls[:2]:
            answer = await sup.post(_erasure(case_id, call["report_id"]),
                                    json={"reason": "subject_request"})
            assert answer.status_code == 200 and answer.json()["erased"], answer.text
    async with stack.rt.db.reads() as session:
        assert (await session.get(CaseView, case_id)).child_sexes == ["male"]
    async with stack.client("operator") as api:
        girl = await _submit(api, **place, children=[{"age": 11, "sex": "female"}],
                             reporter={"phone": "0911000409"})
    assert girl["new_case"] and girl["case_id"] != case_id
