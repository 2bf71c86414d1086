"""Operators' reports: duplicates join their case, follow-ups re-decide, scopes hold."""

import asyncio
import json
from datetime import UTC, datetime, timedelta

from aiokafka.errors import KafkaTimeoutError
from sqlalchemy import select, update

from schemas.events import Envelope, Topics
from services import retention
from services.common import kafka
from services.common.audit import AuditRecord
from services.common.db import utcnow
from services.intake import readmodel, submission
from services.intake.store import IdempotencyKey, ReportRow
from tests.conftest import eventually, make_settings, start_stack
from tests.integration.test_authorities import _user
from tests.support.consumers import read_all
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


async def test_a_case_is_found_and_shown_by_every_category_its_reports_gave(stack):
    """A case opened as neglect that took a linked report of sexual abuse: a supervisor asking
    for every sexual-abuse case did not find it, and the case and its link page said neglect
    only (found by a review). The alert names sexual abuse; so does the link page, first."""
    from services.common.links import sign_link

    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report(
            category="NEGLECT", indicators=[]))).json()["case_id"]
        other = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 11, "name": "Someone Else"}]))).json()["case_id"]
        linked = (await api.post("/api/v1/reports", json=report(
            category="SEX_ABUSE", indicators=[], link_case_id=case_id))).json()
        assert linked["case_id"] == case_id

        async def both_applied():
            case = await _case(api, case_id)
            return case if case["report_count"] == 2 and case["severity"] == "P1" else None

        case = await eventually(both_applied)
    async with stack.client("supervisor") as sup:
        found = (await sup.get("/api/v1/cases", params={"category": "SEX_ABUSE"})).json()
        assert [c["case_id"] for c in found["items"]] == [case_id] and found["total"] == 1
        assert found["items"][0]["categories"] == ["NEGLECT", "SEX_ABUSE"]
        neglect = (await sup.get("/api/v1/cases", params={"category": "NEGLECT"})).json()
        assert [c["case_id"] for c in neglect["items"]] == [case_id]
        physical = (await sup.get("/api/v1/cases", params={"category": "PHYS_VIOLENCE"})).json()
        assert [c["case_id"] for c in physical["items"]] == [other]
    assert case["category"] == "NEGLECT"  # the first report's, as before
    assert case["categories"] == ["NEGLECT", "SEX_ABUSE"]
    acting = next(t["authority_id"] for t in case["targets"] if t["role"] == "act")
    token = sign_link(stack.base_url, case_id, "view", acting, utcnow() + timedelta(days=7),
                      stack.rt.settings.secret("secret_key")).rsplit("/", 1)[1]
    async with stack.client() as anonymous:
        page = (await anonymous.get(f"/a/{token}")).text
    assert ("P1 Xâm hại tình dục / Sexual abuse (SEX_ABUSE); "
            "Bỏ rơi, bỏ mặc / Abandonment or neglect (NEGLECT).") in page


async def test_a_named_child_joins_its_case_however_many_are_open_there(stack):
    """A busy commune: 24 open cases of one category, each about another named child. A second
    call about the first child joins the first case (only the latest 20 were looked at)."""
    place = {"location": {"province_code": 1, "commune_code": 25}}
    async with stack.client("operator") as api:
        first = None
        for n in range(24):
            answer = (await api.post("/api/v1/reports", json=report(
                **place, children=[{"age": 9, "name": f"Canarykid {n:02d} Nguyen"}],
                reporter={"phone": f"09000000{n:02d}"}))).json()
            assert answer["new_case"], answer
            first = first or answer["case_id"]
        again = (await api.post("/api/v1/reports", json=report(
            **place, children=[{"age": 9, "name": "Canarykid 00 Nguyen"}]))).json()
    assert again["case_id"] == first and not again["new_case"]


async def test_an_unnamed_child_of_another_age_opens_a_case_of_its_own(stack):
    """A case's unnamed children are told apart by age: a 12-year-old is not the 5-year-old of
    the open case next door, and joined to it would get no alert of its own."""
    async with stack.client("operator") as api:
        first = (await api.post("/api/v1/reports", json=report())).json()  # a named girl of 5
        older = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 12, "sex": "male"}], reporter={"phone": "0911000012"}))).json()
        about = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 6}], reporter={"phone": "0911000006"}))).json()
    assert older["new_case"] and older["case_id"] != first["case_id"]
    assert about["case_id"] == first["case_id"]  # a caller's estimate of her age: 6, not 5


async def test_an_unnamed_child_of_the_other_sex_opens_a_case_of_its_own(stack):
    """Found by a data-protection review: an unnamed girl of 11 joined the open case of a boy of
    10 in the same commune and category. She got no alert and no clock of her own, and her
    report's identity went to the authority of his case. A caller who does not know the
    child's sex still finds the case."""
    place = {"location": {"province_code": 1, "commune_code": 25}, "category": "NEGLECT",
             "indicators": []}

    async def call(phone, **child):
        return (await api.post("/api/v1/reports", json=report(
            **place, children=[child], reporter={"phone": phone}))).json()

    async with stack.client("operator") as api:
        boy = await call("0911000300", age=10, sex="male")
        girl = await call("0911000301", age=11, sex="female")
        not_known = await call("0911000302", age=10)  # "unknown": could be either
        brother = await call("0911000303", age=9, sex="male")
    assert girl["new_case"] and girl["case_id"] != boy["case_id"]
    assert not not_known["new_case"] and not brother["new_case"]
    assert brother["case_id"] == boy["case_id"]


async def test_a_child_at_home_does_not_join_a_kindergarten_case(stack):
    """A viral kindergarten case is open in the commune. A neighbour calls about a child of 4
    beaten at home by her stepfather: another incident, with its own alert and 12-hour clock.
    Callers name the kindergarten a school or a care facility: one incident still."""
    at_school = dict(setting="school", children=[{"age": 4}], reporter=None)
    async with stack.client("operator") as api:
        kindergarten = (await api.post("/api/v1/reports", json=report(**at_school))).json()
        home = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 4, "sex": "female"}], reporter=None,
            indicators=["ongoing", "caregiver_is_abuser"]))).json()
        named_at_home = (await api.post("/api/v1/reports", json=report(
            category="NEGLECT", indicators=[], children=[{"age": 4, "name": "Canary Thu Trang"}],
            location={"province_code": 1, "commune_code": 8}))).json()
        anonymous_at_school = (await api.post("/api/v1/reports", json=report(
            category="NEGLECT", indicators=[], setting="school", children=[{"age": 4}],
            reporter=None, location={"province_code": 1, "commune_code": 8}))).json()
        care_facility = (await api.post("/api/v1/reports", json=report(
            **{**at_school, "setting": "care_facility", "children": [{"age": 5}]}))).json()
    assert home["new_case"] and home["case_id"] != kindergarten["case_id"]
    assert anonymous_at_school["new_case"]
    assert anonymous_at_school["case_id"] != named_at_home["case_id"]
    assert care_facility["case_id"] == kindergarten["case_id"]


async def test_part_of_a_childs_name_finds_its_case(stack):
    """Callers give what they know of a name: "Minh An", "bé An" ("little An") are the
    "Nguyễn Minh An" of the open case; "Trần Thị An", or an An of 12, is another child."""
    place = {"location": {"province_code": 1, "commune_code": 25}, "setting": "school"}

    async def call(name, age=4, phone="0911000200", where="school"):
        return (await api.post("/api/v1/reports", json=report(
            **{**place, "setting": where}, children=[{"age": age, "name": name}],
            reporter={"phone": phone}))).json()

    async with stack.client("operator") as api:
        first = await call("Nguyễn Minh An")
        part = await call("Minh An", phone="0911000201")
        little = await call("bé An", age=5, phone="0911000202")
        whole_after_part = await call("Canary Nguyen Minh An", phone="0911000203")
        other = await call("Trần Thị An", phone="0911000204")
        older = await call("An", age=12, phone="0911000205")
        stranger = await call("Ngọc", phone="0911000206")
        punctuated = await call("Nguyễn Minh-An.", phone="0911000207")
        namesake = await call("Minh An", age=14, phone="0911000208")  # another child
        place["location"]["commune_code"] = 70
        family = await call("Châu Minh Khoa", where="home")  # Châu is a family name, not cháu
        another = await call("Trần Minh Khoa", where="home", phone="0911000209")
    assert part["case_id"] == little["case_id"] == first["case_id"] == punctuated["case_id"]
    assert not whole_after_part["new_case"]  # its end is the case's whole name
    assert other["new_case"] and older["new_case"] and stranger["new_case"]
    assert namesake["new_case"] and another["case_id"] != family["case_id"]
    assert len({other["case_id"], older["case_id"], stranger["case_id"], first["case_id"]}) == 4


async def test_a_case_does_not_drift_to_every_age_and_every_place(stack):
    """Unnamed calls each within 2 years of the last (5, 7, 9) joined a case about a child of
    5; one call saying "other" opened a kindergarten case to a child at home."""
    place = {"location": {"province_code": 1, "commune_code": 148}, "setting": "school"}

    async def call(age, setting="school"):
        return (await api.post("/api/v1/reports", json=report(
            **{**place, "setting": setting}, children=[{"age": age}], reporter=None))).json()

    async with stack.client("operator") as api:
        first = await call(5)
        other = await call(5, "other")
        seven = await call(7)
        nine = await call(9)
        home = await call(5, "home")
    assert other["case_id"] == seven["case_id"] == first["case_id"]
    assert nine["new_case"] and home["new_case"]


async def test_part_of_a_name_joins_the_case_naming_it_not_a_later_unnamed_one(stack):
    place = {"location": {"province_code": 1, "commune_code": 283}}
    async with stack.client("operator") as api:
        named = (await api.post("/api/v1/reports", json=report(
            **place, children=[{"age": 5, "name": "Lê Minh Tuấn"}]))).json()
        await api.post("/api/v1/reports", json=report(
            **place, children=[{"age": 5}], reporter=None, new_case=True))
        part = (await api.post("/api/v1/reports", json=report(
            **place, children=[{"age": 5, "name": "Minh Tuấn"}],
            reporter={"phone": "0911000301"}))).json()
    assert part["case_id"] == named["case_id"]


async def test_a_call_about_an_information_only_case_opens_one_that_alerts(stack):
    """A supervisor set the case to P5 (a duplicate, say): it chases nobody. A new call joined
    it and went unheard; it now opens a case of its own, routed and alerted."""
    async with stack.client("operator") as api, stack.client("supervisor") as sup:
        first = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 7}], reporter=None))).json()["case_id"]
        await eventually(lambda: _severity(api, first, "P1"))
        quiet = await sup.post(f"/api/v1/cases/{first}/updates", json={
            "severity_override": {"severity": "P5", "reason": "a duplicate of another case"}})
        assert quiet.status_code == 202, quiet.text
        await eventually(lambda: _severity(api, first, "P5"))
        again = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 8}], reporter=None))).json()
    assert again["new_case"] and again["case_id"] != first


async def test_a_named_child_joins_its_own_case_not_the_latest_one(stack):
    """The mother names her daughter; an anonymous call about a child of the same age came in
    since and opened a case of its own. The daughter's report joins her case, not the latest."""
    async with stack.client("operator") as api:
        named = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 4, "name": "Canary Hai Yen"}]))).json()
        anonymous = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 4}], reporter=None, new_case=True))).json()
        again = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 4, "name": "canary hải yến"}], reporter={"phone": "0911000300"}
        ))).json()
    assert anonymous["case_id"] != named["case_id"]
    assert again["case_id"] == named["case_id"]


async def test_an_operator_opens_a_case_of_its_own_where_matching_would_join_one(stack):
    """Two unnamed children of 5 and 6 in one commune: matching takes them for one, the operator
    who heard the caller knows better. The second child gets a case, targets and clocks of its
    own, and the first case does not count the report."""
    other_child = dict(children=[{"age": 6}], reporter={"phone": "0911000106"})
    async with stack.client("operator") as api:
        first = (await api.post("/api/v1/reports", json=report())).json()
        own = await api.post("/api/v1/reports", json=report(**other_child, new_case=True),
                             headers={"Idempotency-Key": "another-incident"})
        both = await api.post("/api/v1/reports", json=report(
            **other_child, new_case=True, link_case_id=first["case_id"]))
        text = await api.post("/api/v1/reports", json=report(**other_child, new_case="yes"))
        assert own.status_code == 202, own.text
        assert own.json()["new_case"] and own.json()["case_id"] != first["case_id"]

        async def routed():
            case = await _case(api, own.json()["case_id"])
            return case if case["targets"] else None

        case = await eventually(routed)
        assert case["severity"] and any(t["role"] == "act" for t in case["targets"])
        assert (await _case(api, first["case_id"]))["report_count"] == 1
    assert both.status_code == text.status_code == 422
    assert [e["loc"] for e in both.json()["detail"]] == [["body", "new_case"]]
    assert text.json()["detail"][0]["loc"] == ["body", "new_case"]


async def test_a_name_pasted_with_a_zero_width_space_is_the_same_name(stack):
    async with stack.client("operator") as api:
        first = (await api.post("/api/v1/reports", json=report())).json()
        pasted = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 5, "name": "Canaryname\u200bThi\u00a0Hidden"}],
            reporter={"phone": "0911222444"}))).json()
    assert pasted["case_id"] == first["case_id"] and not pasted["new_case"]


async def test_a_child_of_16_or_17_is_flagged_on_the_case(stack):
    async with stack.client("operator") as api:
        older = (await api.post("/api/v1/reports", json=report(
            children=[{"age": 16}], category="EXPLOITATION", indicators=[]))).json()
        younger = (await api.post("/api/v1/reports", json=report())).json()
        assert (await _case(api, older["case_id"]))["flags"] == ["age_16_17"]
        assert (await _case(api, younger["case_id"]))["flags"] == []


async def test_a_child_whose_age_the_caller_does_not_know_is_reported(stack):
    """Form 01 is recorded whatever the caller knows: an unknown age is null, not a guess the
    age rules would act on. `true` is no age, nor a province."""
    async with stack.client("operator") as api:
        unknown = await api.post("/api/v1/reports", json=report(
            category="SEX_ABUSE", indicators=[], children=[{"sex": "female"}],
            location={"province_code": 1, "commune_code": 8}))
        assert unknown.status_code == 202, unknown.text

        async def decided():
            case = await _case(api, unknown.json()["case_id"])
            return case if case["severity"] else None

        assert (await eventually(decided))["severity"] == "P1"  # the category's own default
        boolean = await api.post("/api/v1/reports", json=report(children=[{"age": True}]))
        province = await api.post("/api/v1/reports", json=report(
            location={"province_code": True, "commune_code": 4}))
    assert boolean.status_code == province.status_code == 422
    assert boolean.json()["detail"][0]["loc"] == ["body", "children", 0, "age"]
    assert province.json()["detail"][0]["loc"] == ["body", "location", "province_code"]


async def test_simultaneous_calls_about_one_child_open_one_case(stack):
    """Five callers at once about the same child (a viral incident): one case, five
    independent reports, not five cases each routed and alerted on its own."""
    async with stack.client("operator") as api:
        bodies = [report(reporter={"phone": f"09110000{i:02d}"}) for i in range(5)]
        answers = await asyncio.gather(*[api.post("/api/v1/reports", json=b) for b in bodies])
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        cases = {a.json()["case_id"] for a in answers}
        assert len(cases) == 1, cases
        assert sum(a.json()["new_case"] for a in answers) == 1
        assert (await _case(api, cases.pop()))["independent_reports"] == 5


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
        # A filter it does not know is refused, not ignored: every case, as if filtered.
        misspelt = await api.get("/api/v1/cases", params={"serverity": "P1"})
        assert misspelt.status_code == 422
        assert [e["loc"] for e in misspelt.json()["detail"]] == [["query", "serverity"]]
        both = await api.get("/api/v1/cases", params=[("status", "open"), ("status", "closed")])
        assert both.status_code == 422
        assert [e["loc"] for e in both.json()["detail"]] == [["query", "status"]]
        # Reports entered to the same minute: pages hold each case once, the newest case first.
        minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
        same = [(await api.post("/api/v1/reports", json=report(
            received_at=minute.isoformat(), location={"province_code": 1, "commune_code": 8},
            category=category, indicators=[]))).json()["case_id"]
            for category in ("NEGLECT", "BULLYING", "INJURY")]

        async def paged():
            pages = [(await api.get("/api/v1/cases", params={
                "limit": 1, "offset": i, "commune_code": 8})).json()["items"]
                for i in range(3)]
            return [p[0]["case_id"] for p in pages if p] if all(pages) else None
        assert await eventually(paged) == sorted(same, reverse=True)
    async with stack.client("authority") as authority:  # commune 4's authorities only
        ids = {c["case_id"] for c in (await authority.get("/api/v1/cases")).json()["items"]}
        assert mine in ids and elsewhere not in ids


async def test_a_retry_finishes_a_first_attempt_that_died_after_its_publish(stack, monkeypatch):
    """A crash between the publish and its record leaves the report pending, its event on
    Kafka. A retry while the first attempt may still be publishing gets 409 and Retry-After;
    a later one gets its answer, even with the broker down, since the event is on Kafka. One
    report, one case, either way."""
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

        # The broker does not answer now, but intake's consumer has seen the first attempt's
        # event on Kafka: the report is accepted, 202, not a 503.
        async def hangs(*args):
            await asyncio.sleep(3600)
        async with stack.rt.db.reads() as session:
            event = Envelope.model_validate_json(await session.scalar(select(ReportRow.event)))

        async def applied():
            return await readmodel.unapplied(stack.rt.db, [event]) == []
        await eventually(applied)
        real_publish = kafka.publish_input
        monkeypatch.setattr(kafka, "publish_input", hangs)
        monkeypatch.setattr(submission, "PUBLISH_TIMEOUT_S", 0.2)
        later = await api.post("/api/v1/reports", json=body, headers=key)
        monkeypatch.setattr(kafka, "publish_input", real_publish)
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


async def _refused_then_landed(monkeypatch, send) -> Envelope:
    """`send()` while the broker takes the input's event but its acknowledgement is lost: the
    answer is 503; then the event reaches Kafka after all. Returns that event."""
    taken, real_publish = [], kafka.publish_input

    async def ack_lost(*args):
        taken.append(args)
        raise KafkaTimeoutError()

    monkeypatch.setattr(kafka, "publish_input", ack_lost)
    refused = await send()
    monkeypatch.setattr(kafka, "publish_input", real_publish)
    assert refused.status_code == 503, refused.text
    [(producer, topic, envelope)] = taken
    await real_publish(producer, topic, envelope)  # the broker had it after all
    return envelope


async def test_a_report_whose_acknowledgement_was_lost_is_adopted_not_half_accepted(
        stack, monkeypatch):
    """The broker takes the event but its acknowledgement never comes: 503, and then the event
    is on Kafka, where escalation acts on it. Intake adopts the report (accepted, its identity
    kept, recorded) and a retry with its key gets the answer under the same ids."""
    body, key = report(), {"Idempotency-Key": "k-ack-lost"}
    async with stack.client("operator") as api:
        envelope = await _refused_then_landed(
            monkeypatch, lambda: api.post("/api/v1/reports", json=body, headers=key))

        async def adopted():
            async with stack.rt.db.reads() as session:
                return await session.scalar(select(ReportRow.published).where(
                    ReportRow.event_id == envelope.id))
        await eventually(adopted)
        case_id, report_id = envelope.subject, envelope.data["report_id"]
        identity = (await api.get(f"/api/v1/cases/{case_id}/identity")).json()
        assert [r["report_id"] for r in identity["reports"]] == [report_id]
        assert identity["reports"][0]["children"][0]["name"] == "Canaryname Thi Hidden"
        retry = await api.post("/api/v1/reports", json=body, headers=key)
        assert retry.status_code == 202, retry.text
        assert (retry.json()["case_id"], retry.json()["report_id"]) == (case_id, report_id)
    async with stack.rt.db.reads() as session:
        outcomes = (await session.scalars(select(AuditRecord.outcome).where(
            AuditRecord.record == case_id, AuditRecord.action == "write"))).all()
    assert sorted(outcomes) == ["adopted", "replayed", "withdrawn"]
    sent = [e.id for e in await read_all(stack.rt.settings, Topics.INPUTS)
            if e.data.get("report_id") == report_id]
    assert sent == [envelope.id]


async def test_a_lost_acknowledgement_already_seen_on_kafka_is_202(stack, monkeypatch):
    """When the event was on Kafka and applied before the publish gave up, the answer is 202."""
    real_publish = kafka.publish_input

    async def applied_then_lost(producer, topic, envelope):
        await real_publish(producer, topic, envelope)

        async def applied():
            return await readmodel.unapplied(stack.rt.db, [envelope]) == []
        await eventually(applied)
        raise KafkaTimeoutError()

    monkeypatch.setattr(kafka, "publish_input", applied_then_lost)
    async with stack.client("operator") as api:
        answer = await api.post("/api/v1/reports", json=report())
        assert answer.status_code == 202, answer.text
    async with stack.rt.db.reads() as session:
        assert await session.scalar(select(ReportRow.published).where(
            ReportRow.report_id == answer.json()["report_id"])) is True


async def test_a_refused_report_on_an_open_case_counts_for_nothing(stack, monkeypatch):
    """Withdrawn, not accepted: its identity is not opened with the case's, and it is not an
    earlier report by its reporter."""
    async with stack.client("operator") as api:
        first = (await api.post("/api/v1/reports", json=report())).json()

        async def down(*args):
            raise ConnectionError("the broker is down")
        real_publish = kafka.publish_input
        monkeypatch.setattr(kafka, "publish_input", down)
        second = report(reporter={"name": "Canarysecond Caller", "phone": "0911222333",
                                  "consent_to_contact": True})
        assert (await api.post("/api/v1/reports", json=second)).status_code == 503
        async with stack.rt.db.reads() as session:
            rows = (await session.scalars(select(ReportRow.case_id))).all()
        assert rows == [first["case_id"]] * 2  # it would have joined the case
        identity = (await api.get(f"/api/v1/cases/{first['case_id']}/identity")).json()
        assert [r["report_id"] for r in identity["reports"]] == [first["report_id"]]
        assert "Canarysecond" not in json.dumps(identity)

        # Submitted again once the broker is back: an independent report, not a repeat of the
        # refused one.
        monkeypatch.setattr(kafka, "publish_input", real_publish)
        again = await api.post("/api/v1/reports", json=second)
        assert again.status_code == 202 and again.json()["case_id"] == first["case_id"]
        assert (await _case(api, first["case_id"]))["independent_reports"] == 2


def _dies_before_publish(stack):
    """rt.inputs for a process that dies after storing an input as pending, before its publish."""
    real = stack.rt.inputs

    async def inputs(item):
        await real(item)
        if isinstance(item, submission.Pending):
            raise RuntimeError("the process died here")
    return inputs


async def _key_event(stack, key: str) -> str | None:
    async with stack.rt.db.reads() as session:
        return await session.scalar(select(IdempotencyKey.event).where(IdempotencyKey.key == key))


async def test_a_follow_up_retry_answers_only_once_its_event_is_on_kafka(stack, monkeypatch):
    """A follow-up has a report's guarantees: its first attempt dies after storing its key, before
    its publish. A retry while it may still be publishing gets 409; with the broker down, 503 and
    it stays pending; later, the retry publishes the same event and gets the first answer."""
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        url, body = f"/api/v1/cases/{case_id}/updates", {"publicity": "PA2"}
        key = {"Idempotency-Key": "u-crash"}
        real_inputs, real_publish = stack.rt.inputs, kafka.publish_input
        monkeypatch.setattr(stack.rt, "inputs", _dies_before_publish(stack))
        assert (await api.post(url, json=body, headers=key)).status_code == 500
        monkeypatch.setattr(stack.rt, "inputs", real_inputs)
        pending = Envelope.model_validate_json(await _key_event(stack, "u-crash"))

        soon = await api.post(url, json=body, headers=key)
        assert soon.status_code == 409, soon.text
        assert soon.headers["Retry-After"] == "5"

        async with stack.rt.db.writes() as session, session.begin():  # time passes
            await session.execute(update(IdempotencyKey).values(
                created_at=utcnow() - timedelta(minutes=1)))

        async def down(*args):
            raise ConnectionError("the broker is down")
        monkeypatch.setattr(kafka, "publish_input", down)
        refused = await api.post(url, json=body, headers=key)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert await _key_event(stack, "u-crash") == pending.model_dump_json()  # still pending
        fresh = await api.post(url, json=body, headers={"Idempotency-Key": "u-fresh"})
        assert fresh.status_code == 503
        assert await _key_event(stack, "u-fresh") is not None  # refused: withdrawn, kept
        monkeypatch.setattr(kafka, "publish_input", real_publish)

        later = await api.post(url, json=body, headers=key)
        assert later.status_code == 202, later.text
        assert later.json()["update_id"] == pending.data["update_id"]
        assert await _key_event(stack, "u-crash") is None
        assert (await api.post(url, json=body, headers=key)).json() == later.json()
    # The refused one is not published by the sweep, and the purge removes it.
    assert await submission.sweep(stack.rt, older_than=timedelta(0)) == 0
    a_day = stack.rt.settings.model_copy(update={"retention_withdrawn_days": 1})
    await retention.purge(stack.rt.db, a_day, {"intake"}, now=utcnow() + timedelta(days=2))
    async with stack.rt.db.reads() as session:
        assert await session.get(IdempotencyKey, ("test-operator", "u-fresh")) is None
    updates = [e.id for e in await read_all(stack.rt.settings, Topics.INPUTS) if e.type == pending.type]
    assert updates == [pending.id]


async def test_the_start_up_sweep_finishes_a_pending_follow_up(stack, monkeypatch):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        real_inputs = stack.rt.inputs
        monkeypatch.setattr(stack.rt, "inputs", _dies_before_publish(stack))
        died = await api.post(f"/api/v1/cases/{case_id}/updates", json={"publicity": "PA2"},
                              headers={"Idempotency-Key": "u-sweep"})
        assert died.status_code == 500
        monkeypatch.setattr(stack.rt, "inputs", real_inputs)
        pending = Envelope.model_validate_json(await _key_event(stack, "u-sweep"))

        assert await submission.sweep(stack.rt, older_than=timedelta(0)) == 1
        assert await _key_event(stack, "u-sweep") is None
        timeline = (await _case(api, case_id))["timeline"]
        assert pending.data["update_id"] in [t["detail"].get("update_id") for t in timeline]
    assert pending.id in [e.id for e in await read_all(stack.rt.settings, Topics.INPUTS)]


async def test_an_idempotent_replay_is_audited(stack):
    """Every write attempt leaves a record: a repeat answered from its key too."""
    body, key = report(), {"Idempotency-Key": "k-audited"}
    async with stack.client("operator") as api:
        first = await api.post("/api/v1/reports", json=body, headers=key)
        again = await api.post("/api/v1/reports", json=body, headers=key)
        case_id = first.json()["case_id"]
        url = f"/api/v1/cases/{case_id}/updates"
        for _ in range(2):
            answer = await api.post(url, json={"publicity": "PA2"}, headers={"Idempotency-Key": "u-a"})
            assert answer.status_code == 202, answer.text
        # The key with another body (not a lowering of publicity, which an operator may not
        # make whatever the key: 403 once the read model has PA2): refused, and recorded.
        other = await api.post(url, json={"publicity": "PA2", "indicators": ["ongoing"]},
                               headers={"Idempotency-Key": "u-a"})
        assert other.status_code == 409, other.text
    assert again.json() == first.json()
    async with stack.rt.db.reads() as session:
        writes = (await session.execute(select(AuditRecord.outcome, AuditRecord.fields).where(
            AuditRecord.record == case_id, AuditRecord.action == "write",
            AuditRecord.user_id == "test-operator").order_by(AuditRecord.id))).all()
    assert [outcome for outcome, _ in writes] == ["ok", "replayed", "ok", "replayed", "rejected"]
    assert writes[0].fields == writes[1].fields and "report_id" in writes[1].fields
    assert writes[2].fields == writes[3].fields and "publicity" in writes[3].fields


async def test_a_link_to_a_case_outside_the_jurisdiction_is_refused_like_an_unknown_one(stack):
    local = await _user(stack, "test-commune4-operator", "operator", "commune:4", [])
    async with stack.client("operator") as api:
        other = (await api.post("/api/v1/reports", json=report(
            location={"province_code": 79, "commune_code": 26506}))).json()["case_id"]
    async with stack.client(local) as me:
        outside = await me.post("/api/v1/reports", json=report(link_case_id=other))
        unknown = await me.post("/api/v1/reports", json=report(link_case_id="C-ZZZZZZZZZZ"))
    assert outside.status_code == unknown.status_code == 422
    assert outside.json() == unknown.json()  # nothing to learn about which case ids exist
    assert outside.json()["detail"][0]["loc"] == ["body", "link_case_id"]
    async with stack.rt.db.reads() as session:
        denied = (await session.scalars(select(AuditRecord.record).where(
            AuditRecord.user_id == local, AuditRecord.outcome == "denied"))).all()
    assert denied == [other]
    async with stack.client("operator") as api:
        assert (await _case(api, other))["report_count"] == 1


async def test_received_at_more_than_30_days_ago_is_refused_with_the_field(stack):
    """A wrong year would make every deadline overdue at once; year 1 was a 500 (an overflow)."""
    def ago(days):
        return (datetime.now(UTC) - timedelta(days=days)).isoformat()

    async with stack.client("operator") as api:
        for received_at in ("0001-01-01T00:00:00+00:00", "0001-01-02T00:00:00+14:00", ago(31)):
            answer = await api.post("/api/v1/reports", json=report(received_at=received_at))
            assert answer.status_code == 422, (received_at, answer.text)
            assert answer.json()["detail"][0]["loc"] == ["body", "received_at"]
            assert "30 days" in answer.json()["detail"][0]["msg"]
        ok = await api.post("/api/v1/reports", json=report(received_at=ago(29)))
        assert ok.status_code == 202, ok.text


async def test_a_chunked_body_over_the_limit_is_413(stack):
    """No Content-Length: the limit is counted as the body streams (it was FastAPI's 400)."""
    body = json.dumps(report(narrative="x" * 300_000)).encode()

    async def chunks():
        for i in range(0, len(body), 10_000):
            yield body[i:i + 10_000]

    async with stack.client("operator") as api:
        answer = await api.post("/api/v1/reports", content=chunks(),
                                headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text


async def test_a_huge_header_is_431_and_holds_nobody_up(stack):
    """A 100 MB header held the process's one event loop for half a minute (its consumers,
    timers and deliveries too): the head is now refused past 64 KiB, as it arrives."""
    host, port = stack.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    sent = 0
    try:
        for _ in range(1024):  # up to 16 MB, 16 KB at a time, until the server closes
            writer.write(b"a" * 16384)
            await writer.drain()
            sent += 16384
    except ConnectionError:
        pass
    try:
        answer = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:  # the 431 can be lost to the reset of a close mid-send
        answer = b""
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") or not answer, answer[:80]
    assert sent < 4 * 1024 * 1024  # closed long before all of it was sent
    # Sent whole, then read: the answer says why.
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ") and b"over 65536 bytes" in answer, answer[:200]
    async with stack.client() as anyone:  # a normal request with its 8 KB of headers is served
        ok = await anyone.get("/healthz", headers={"X-Ordinary": "b" * 8000})
    assert ok.status_code == 200


async def test_a_refused_follow_up_without_a_key_that_lands_after_all_is_recorded(
        stack, monkeypatch):
    """A follow-up with no Idempotency-Key stores nothing before its publish. Refused with 503,
    its event may still reach Kafka and be acted on: then the write is recorded, as adopted."""
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        await _refused_then_landed(monkeypatch, lambda: api.post(
            f"/api/v1/cases/{case_id}/updates", json={"publicity": "PA1"}))

        async def recorded():
            async with stack.rt.db.reads() as session:
                return (await session.execute(select(AuditRecord.user_id, AuditRecord.role).where(
                    AuditRecord.record == case_id, AuditRecord.outcome == "adopted"))).all()
        assert await eventually(recorded) == [("test-operator", "operator")]

        async def acted_on():
            return (await _case(api, case_id))["publicity"] == "PA1"
        await eventually(acted_on)


async def test_a_422_names_the_field_and_never_echoes_identity(stack):
    """A name or phone number that fails validation is not sent back: the answer names the
    field and what is wrong, nothing of the value (it would end up in proxies' logs)."""
    name, phone = "Canaryname " + "Dai" * 70, "0987654321" + "9" * 30
    body = report(children=[{"age": 5, "name": name}],
                  reporter={"name": "Canaryreporter Van", "phone": phone})
    async with stack.client("operator") as api:
        answer = await api.post("/api/v1/reports", json=body)
    assert answer.status_code == 422, answer.text
    assert "Canaryname" not in answer.text and "0987654321" not in answer.text
    errors = {tuple(e["loc"]): e["msg"] for e in answer.json()["detail"]}
    assert set(errors) == {("body", "children", 0, "name"), ("body", "reporter", "phone")}
    assert all("at most" in msg for msg in errors.values())
    # Nor a name typed into a code's field.
    misplaced = report(category="Canarycat Nguyen", indicators=["ongoing", "Canaryind Tran"])
    async with stack.client("operator") as api:
        answer = await api.post("/api/v1/reports", json=misplaced)
    assert answer.status_code == 422 and "Canary" not in answer.text, answer.text
    assert {tuple(e["loc"]) for e in answer.json()["detail"]} == {
        ("body", "category"), ("body", "indicators", 1)}


async def test_keyed_retries_during_an_outage_are_each_a_503(stack, monkeypatch):
    """A client that obeys Retry-After retries with the same key while the broker is still down:
    every retry is told 503 again (its input withdrawn again), never a 500; once the broker is
    back, the same key is accepted once."""
    async def down(*args):
        raise ConnectionError("the broker is down")
    real_publish = kafka.publish_input
    monkeypatch.setattr(kafka, "publish_input", down)
    body, key = report(), {"Idempotency-Key": "outage-retry"}
    async with stack.client("operator") as api:
        for _ in range(3):
            refused = await api.post("/api/v1/reports", json=body, headers=key)
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "5"
            async with stack.rt.db.writes() as session, session.begin():  # Retry-After passes
                await session.execute(update(IdempotencyKey).values(
                    created_at=utcnow() - timedelta(minutes=1)))
                await session.execute(update(ReportRow).values(
                    created_at=utcnow() - timedelta(minutes=1)))
        monkeypatch.setattr(kafka, "publish_input", real_publish)
        accepted = await api.post("/api/v1/reports", json=body, headers=key)
        assert accepted.status_code == 202, accepted.text
        assert (await api.post("/api/v1/reports", json=body, headers=key)).json() == accepted.json()
    reports = [e for e in await read_all(stack.rt.settings, Topics.INPUTS)
               if e.data.get("report_id") == accepted.json()["report_id"]]
    assert len(reports) == 1


async def test_a_running_intake_finishes_a_report_whose_request_died_and_records_it(
        kafka_bootstrap, inbox, tmp_path, monkeypatch):
    """The database write after the publish fails: the request answers 500 and the report stays
    pending. The running intake's sweep (not only a restart) marks it accepted, and the audit
    trail has the operator's write."""
    monkeypatch.setattr(submission, "SWEEP_INTERVAL_S", 0.5)
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", inbox)
    stack = await start_stack(settings, services=("intake",))
    try:
        real_inputs = stack.rt.inputs

        async def dies_after_publish(item):
            if isinstance(item, submission.Published):
                raise OSError("disk I/O error")
            return await real_inputs(item)
        monkeypatch.setattr(stack.rt, "inputs", dies_after_publish)
        async with stack.client("operator") as api:
            assert (await api.post("/api/v1/reports", json=report())).status_code == 500
        monkeypatch.setattr(stack.rt, "inputs", real_inputs)
        async with stack.rt.db.writes() as session, session.begin():  # older than 30 s
            await session.execute(update(ReportRow).values(
                created_at=utcnow() - timedelta(minutes=1)))

        async def published():
            async with stack.rt.db.reads() as session:
                row = (await session.scalars(select(ReportRow))).one()
            return row if row.published else None
        row = await eventually(published)
        async with stack.rt.db.reads() as session:
            trail = (await session.execute(select(AuditRecord.user_id, AuditRecord.action,
                                                  AuditRecord.outcome).where(
                AuditRecord.record == row.case_id))).all()
        assert ("test-operator", "write", "ok") in trail
    finally:
        await stack.stop()


async def test_a_keyed_retry_of_an_accepted_input_gets_its_answer_after_the_case_closed(stack):
    """The client retries (its first answer was lost): the case has been closed since, which
    would refuse a new update, but this one was accepted: the retry gets the first answer."""
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]
        body = report(category="NEGLECT", indicators=[], link_case_id=case_id)
        linked = (await api.post("/api/v1/reports", json=body,
                                 headers={"Idempotency-Key": "r-1"})).json()
        assert linked["case_id"] == case_id
        url, key = f"/api/v1/cases/{case_id}/updates", {"Idempotency-Key": "u-1"}
        update = await api.post(url, json={"publicity": "PA1"}, headers=key)
        assert update.status_code == 202
        await eventually(lambda: _routed(api, case_id))
        async with stack.client("authority") as authority:
            assert (await authority.post(f"/api/v1/cases/{case_id}/milestones", json={
                "authority_id": "commune:4:child_protection", "milestone": "case_closed",
                "outcome": "resolved"})).status_code == 202
        await eventually(lambda: _status(api, case_id, "closed"))
        retry = await api.post(url, json={"publicity": "PA1"}, headers=key)
        assert retry.status_code == 202 and retry.json() == update.json()
        fresh = await api.post(url, json={"publicity": "PA1"}, headers={"Idempotency-Key": "u-2"})
        assert fresh.status_code == 409  # a new update is refused: the case is closed
        # A report linked to the case then, retried: its first answer, not the 422 that a
        # link to a closed case gets.
        again = await api.post("/api/v1/reports", json=body, headers={"Idempotency-Key": "r-1"})
        assert again.status_code == 202 and again.json() == linked


async def _routed(api, case_id: str) -> bool:
    return bool((await api.get(f"/api/v1/cases/{case_id}")).json()["targets"])


async def _status(api, case_id: str, status: str) -> bool:
    return (await api.get(f"/api/v1/cases/{case_id}")).json()["status"] == status
