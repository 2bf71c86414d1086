"""Authorities on the real broker: acknowledgements (API and one-click link), legal milestones,
transfers, and the audit trail of a refused read."""

import asyncio
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from schemas.events import Envelope, TargetEscalated, Topics, TransferRequested
from services.common import kafka
from services.common.audit import AuditRecord
from services.common.db import utcnow
from services.common.links import sign_link
from services.intake import readmodel, submission
from services.escalation.store import EscalationMilestone, EscalationTarget, MilestoneTimer, Timer
from tests.conftest import eventually, make_settings, start_stack
from tests.support.packs import short_measure_pack
from tests.support.reports import report

CP, POLICE = "commune:4:child_protection", "commune:4:police"
ELSEWHERE = "commune:8:child_protection"  # a neighbouring commune of province 1
PROVINCE_CP = "province:1:child_protection"  # informed of a P1 case, not asked to act


async def _user(stack, user_id: str, role: str, scope: str, authorities: list[str]) -> str:
    """One more user with a token (conftest's authority_elsewhere names no real commune)."""
    from services.common import auth

    async with stack.rt.db.writes() as session, session.begin():
        await auth.create_user(session, user_id, user_id, role, scope, authorities)
        await session.flush()
        token = await auth.issue_token(session, user_id)
    stack.tokens[user_id] = token
    return user_id


async def _p1_case(stack) -> tuple[str, dict]:
    """A P1 case (PHYS_VIOLENCE, age 5, ongoing): commune child protection and police must act."""
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]

        async def routed():
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            acts = {t["authority_id"] for t in case["targets"] if t.get("role") == "act"}
            return case if {CP, POLICE} <= acts else None

        return case_id, await eventually(routed)


async def _target(stack, case_id: str, authority_id: str) -> EscalationTarget | None:
    async with stack.rt.db.reads() as session:
        return await session.get(EscalationTarget, (case_id, authority_id))


async def _timers(stack, case_id: str) -> list[Timer]:
    async with stack.rt.db.reads() as session:
        return list((await session.scalars(select(Timer).where(Timer.case_id == case_id))).all())


async def _fire_all(stack, now) -> None:
    while await stack.rt.parts["escalation"].fire_due(now=now):
        pass


async def _timeline(stack, case_id: str, kind: str) -> list[dict]:
    async with stack.client("supervisor") as api:
        case = (await api.get(f"/api/v1/cases/{case_id}")).json()
    return [e["detail"] for e in case["timeline"] if e["kind"] == kind]


async def _acknowledge_in_turn(stack, case_id: str, authority_id: str) -> None:
    """Acknowledge for the authority and wait until escalation has it: the inputs of a case
    are taken in order, so every input sent before has been taken too."""
    async with stack.client("authority") as me:
        answer = await me.post(f"/api/v1/cases/{case_id}/acknowledgements",
                               json={"authority_id": authority_id})
        assert answer.status_code == 202, answer.text

    async def acked():
        row = await _target(stack, case_id, authority_id)
        return row is not None and row.acked_at is not None

    await eventually(acked)


async def test_one_agencys_ack_stops_its_escalation_not_anothers(stack):
    case_id, _ = await _p1_case(stack)
    await _acknowledge_in_turn(stack, case_id, CP)
    await _fire_all(stack, utcnow() + timedelta(minutes=20))  # past the 15-minute window

    # All at once, past the window: the police's reminders are overtaken by its breach.
    ran = [(t.authority_id, t.kind, t.outcome) for t in await _timers(stack, case_id)
           if t.outcome in ("fired", "overtaken")]
    assert (POLICE, "breach", "fired") in ran and (POLICE, "reminder", "overtaken") in ran
    assert not [f for f in ran if f[0] == CP]

    async def breached():
        steps = await _timeline(stack, case_id, "target_escalated")
        return steps if any(s["authority_id"] == POLICE and s["step"] == "breach"
                            for s in steps) else None

    steps = await eventually(breached)
    assert not [s for s in steps if s["authority_id"] == CP]


async def test_one_click_link_acknowledges_without_identity(stack):
    case_id, _ = await _p1_case(stack)
    secret = stack.rt.settings.secret("secret_key")
    link = sign_link(stack.base_url, case_id, "view", POLICE, utcnow() + timedelta(days=7), secret)
    token = link.rsplit("/", 1)[1]
    forged = sign_link(stack.base_url, case_id, "view", POLICE, utcnow() + timedelta(days=7),
                       "another-secret").rsplit("/", 1)[1]
    expired = sign_link(stack.base_url, case_id, "view", POLICE, utcnow() - timedelta(seconds=1),
                        secret).rsplit("/", 1)[1]
    not_routed = sign_link(stack.base_url, case_id, "view", ELSEWHERE,
                           utcnow() + timedelta(days=7), secret).rsplit("/", 1)[1]
    before_rotation = sign_link(stack.base_url, case_id, "view", POLICE,
                                utcnow() + timedelta(days=7), "earlier-secret").rsplit("/", 1)[1]
    async with stack.client() as anonymous:
        page = await anonymous.get(f"/a/{token}")
        assert page.status_code == 200 and "Xác nhận đã tiếp nhận / Acknowledge receipt" in page.text
        # The category as the message names it, and no promise of a sign-in it does not have.
        assert "Bạo lực thể chất / Physical violence (PHYS_VIOLENCE)" in page.text
        assert "Sign in" not in page.text
        assert "Canary" not in page.text  # codes only on a page without identity
        # The authority by its directory name, the id beside it.
        name = stack.rt.directory.get(POLICE).name
        assert f"<b>{name}</b> <small>({POLICE})</small>" in page.text
        # A button a thumb can hit, that a second tap on a slow line cannot send again.
        assert "button{width:100%;min-height:48px" in page.text
        assert "onsubmit=\"this.querySelector('button').disabled=true\"" in page.text
        assert "QUÁ HẠN" not in page.text  # not yet
        for bad in (forged, expired, not_routed, "garbage", before_rotation):
            # One page for all of them, fit for a phone: says why and what to do instead.
            for refused in (await anonymous.get(f"/a/{bad}"), await anonymous.post(f"/a/{bad}")):
                assert refused.status_code == 404
                assert refused.headers["content-type"].startswith("text/html")
                assert "<h1>Liên kết không hợp lệ / Link not valid</h1>" in refused.text
                assert "Tổng đài <a href='tel:111'>111</a>" in refused.text
        # A link signed with a key since rotated out works while that key is still listed.
        stack.rt.settings.secret_key_previous = "earlier-secret"
        assert (await anonymous.get(f"/a/{before_rotation}")).status_code == 200
        # The link grants that one action, nothing else.
        assert (await anonymous.get(f"/api/v1/cases/{case_id}")).status_code == 401
        done = await anonymous.post(f"/a/{token}")
        assert done.status_code == 202, done.text
    # Vietnamese first, and when, in Viet Nam time; the police hold no milestone of the case.
    assert "<h1>Đã xác nhận / Acknowledged</h1>" in done.text
    assert "Xin cảm ơn. / Acknowledged at " in done.text and "giờ Việt Nam" in done.text
    assert f"<b>{name}</b>" in done.text and "Next deadlines" not in done.text

    async def acked():
        row = await _target(stack, case_id, POLICE)
        return row is not None and row.acked_at is not None and row.acked_by

    assert await eventually(acked) == f"link:{POLICE}"
    assert (await _target(stack, case_id, CP)).acked_at is None  # not the other agency's
    # Uses that change nothing are recorded too: a second click, and a link of an authority
    # that was only informed.
    informed = sign_link(stack.base_url, case_id, "view", PROVINCE_CP, utcnow() + timedelta(days=7),
                         secret).rsplit("/", 1)[1]
    target = await _readable_target(stack, case_id, POLICE, lambda t: t.get("acknowledged_at"))
    at = _vn(target["acknowledged_at"])
    async with stack.client() as anonymous:
        opened = await anonymous.get(f"/a/{token}")
        again = await anonymous.post(f"/a/{token}")
        assert (await anonymous.post(f"/a/{informed}")).status_code == 409
    assert again.status_code == 200
    assert f"đã xác nhận vụ việc trước đó, lúc {at}. / This authority had already" in again.text
    assert f"lúc {at}. / This authority acknowledged the case at {at}." in opened.text
    async with stack.client("auditor") as auditor:
        trail = (await auditor.get("/api/v1/audit", params={"case_id": case_id,
                                                            "user_id": f"link:{POLICE}"})).json()
        other = (await auditor.get("/api/v1/audit", params={
            "case_id": case_id, "user_id": f"link:{PROVINCE_CP}"})).json()
    assert {r["action"] for r in trail["items"]} >= {"read", "write"}
    assert [(r["action"], r["outcome"]) for r in trail["items"]][-1] == ("write", "replayed")
    assert [(r["action"], r["outcome"]) for r in other["items"]] == [("write", "rejected")]


def _vn(at: str) -> str:
    return datetime.fromisoformat(at).astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).strftime(
        "%H:%M %d/%m/%Y")


def _link(stack, case_id: str, authority_id: str) -> str:
    return "/a/" + sign_link(stack.base_url, case_id, "view", authority_id,
                             utcnow() + timedelta(days=7),
                             stack.rt.settings.secret("secret_key")).rsplit("/", 1)[1]


async def test_a_link_acknowledgement_names_the_milestones_still_held(stack):
    """Child protection holds a P1's 12-hour emergency measure, which its acknowledgement does
    not stop: the page says so, and by when."""
    case_id, _ = await _p1_case(stack)

    async def scheduled():
        async with stack.rt.db.reads() as session:
            m = await session.get(EscalationMilestone, (case_id, "emergency_measure"))
        return m if m is not None and m.authority_id == CP else None

    due = (await eventually(scheduled)).due_at.isoformat()
    async with stack.client() as anonymous:
        done = await anonymous.post(_link(stack, case_id, CP))
    assert done.status_code == 202, done.text
    assert ("Biện pháp bảo vệ khẩn cấp / Emergency protection measure (emergency_measure): "
            "trước / by "
            f"{_vn(due)}</li>") in done.text


async def test_an_overdue_link_says_so_and_still_takes_the_acknowledgement(stack, monkeypatch):
    case_id, case = await _p1_case(stack)
    due = next(t["ack_due"] for t in case["targets"] if t["authority_id"] == POLICE)
    from services.intake.api import links
    monkeypatch.setattr(links, "utcnow", lambda: datetime.fromisoformat(due) + timedelta(minutes=1))
    async with stack.client() as anonymous:
        page = await anonymous.get(_link(stack, case_id, POLICE))
        done = await anonymous.post(_link(stack, case_id, POLICE))
    assert "<b>ĐÃ QUÁ HẠN / Overdue</b>" in page.text and "tier above" in page.text
    assert "<button" in page.text and done.status_code == 202


async def test_missed_twelve_hour_milestone_escalates(stack):
    case_id, case = await _p1_case(stack)
    async with stack.client("authority") as me:
        for authority in (CP, POLICE):  # acknowledged in time: only the milestone is late
            r = await me.post(f"/api/v1/cases/{case_id}/acknowledgements",
                              json={"authority_id": authority})
            assert r.status_code == 202

    async def scheduled():
        async with stack.rt.db.reads() as session:
            m = await session.get(EscalationMilestone, (case_id, "emergency_measure"))
        cp = await _target(stack, case_id, CP)
        return m if m is not None and cp.acked_at is not None else None

    milestone = await eventually(scheduled)
    assert milestone.authority_id == CP
    first_received = datetime.fromisoformat(case["first_received_at"])
    assert milestone.due_at == first_received + timedelta(hours=12)  # from the first receipt

    await _fire_all(stack, milestone.due_at - timedelta(minutes=1))  # reminders only
    async with stack.rt.db.reads() as session:
        m = await session.get(EscalationMilestone, (case_id, "emergency_measure"))
    assert m.missed_at is None

    async def milestone_reminders():  # about the step, not the acknowledgement already given
        alerts = await _timeline(stack, case_id, "alert_requested")
        return [a for a in alerts if a["kind"] == "reminder" and a["authority_id"] == CP]

    reminders = await eventually(milestone_reminders)
    assert reminders and all(a.get("milestone") == "emergency_measure" for a in reminders)
    await _fire_all(stack, milestone.due_at + timedelta(minutes=1))

    async def missed():
        return await _timeline(stack, case_id, "milestone_missed")

    detail = (await eventually(missed))[0]
    assert detail["milestone"] == "emergency_measure" and detail["authority_id"] == CP
    assert detail["to_authority_id"] == "province:1:child_protection"
    province = await _target(stack, case_id, "province:1:child_protection")
    assert province.role == "act" and province.origin == "escalated"  # was inform at P1 PA0

    async def supervisor_told():
        alerts = await _timeline(stack, case_id, "alert_requested")
        return [a for a in alerts if a["kind"] == "supervisor"
                and a["authority_id"] == "commune:4:people_committee"
                and a.get("milestone") == "emergency_measure"]

    assert await eventually(supervisor_told)

    async def province_told():  # which step was missed, not an acknowledgement it never asked
        alerts = await _timeline(stack, case_id, "alert_requested")
        return [a for a in alerts if a["kind"] == "escalated"
                and a["authority_id"] == "province:1:child_protection"
                and a.get("milestone") == "emergency_measure"]

    assert await eventually(province_told)
    async with stack.client("authority") as me:
        shown = (await me.get(f"/api/v1/cases/{case_id}/milestones")).json()
    assert next(m for m in shown if m["milestone"] == "emergency_measure")["missed_at"]


async def test_a_report_entered_after_its_measure_was_due_tells_the_holder_once(
        kafka_bootstrap, inbox, tmp_path):
    """A report entered 11 minutes after the call, under a pack whose emergency measure takes
    10 (the hotline's paper log, hours late, is the same): the commune got the new alert, then
    twice a reminder to complete the measure "before" a time gone by, and never that it was
    overdue. Now its reminders are on the timeline, overtaken, and it gets one message: the
    step is overdue. The timer loop fires on its own, on the real clock."""
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}",
                             inbox, rulepack=str(short_measure_pack(tmp_path)))
    stack = await start_stack(settings)
    try:
        received = utcnow() - timedelta(minutes=11)
        async with stack.client("operator") as api:
            answer = await api.post("/api/v1/reports", json=report(
                received_at=received.isoformat(), category="SEX_ABUSE",
                indicators=["caregiver_is_abuser"]))
            assert answer.status_code == 202, answer.text
        case_id = answer.json()["case_id"]

        async def all_delivered():  # every alert of the case has reached its receiver
            async with stack.client("supervisor") as api:
                timeline = (await api.get(f"/api/v1/cases/{case_id}")).json()["timeline"]
            asked = {e["detail"]["alert_id"] for e in timeline if e["kind"] == "alert_requested"}
            done = {e["detail"]["alert_id"] for e in timeline if e["kind"] == "delivery_delivered"}
            missed = any(e["kind"] == "milestone_missed" for e in timeline)
            return timeline if missed and asked <= done else None

        timeline = await eventually(all_delivered)
        hooks = [r["body"] for r in inbox.requests() if r["path"] == f"/hooks/{CP}"
                 and r["body"]["case_id"] == case_id]
        assert [(h["kind"], h["milestone"]) for h in hooks] == [
            ("alert", None), ("breach", "emergency_measure")]
        own = hooks[1]
        assert own["role"] == "act" and own["about_authority_id"] is None
        assert datetime.fromisoformat(own["milestone_due"]) == received + timedelta(minutes=10)
        reminded = [e["detail"] for e in timeline if e["kind"] == "target_escalated"
                    and e["detail"]["authority_id"] == CP and e["detail"]["milestone"]]
        assert [(r["step"], r["fraction"]) for r in reminded] == [("reminder", 0.5), ("reminder", 0.8)]
        # The supervisors and the province are told it was missed, as before.
        told = {(h["path"], h["body"]["kind"]) for h in inbox.requests()
                if h["body"].get("milestone") == "emergency_measure"}
        assert ("/hooks/commune:4:people_committee", "supervisor") in told
        assert ("/hooks/province:1:child_protection", "escalated") in told
    finally:
        await stack.stop()


async def test_recorded_milestone_does_not_escalate_and_closing_stops_clocks(stack):
    case_id, _ = await _p1_case(stack)
    async with stack.client("authority") as me:
        bad = await me.post(f"/api/v1/cases/{case_id}/milestones",
                            json={"authority_id": CP, "milestone": "made_up"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == ["body", "milestone"], bad.text
        no_outcome = await me.post(f"/api/v1/cases/{case_id}/milestones",
                                   json={"authority_id": CP, "milestone": "case_closed"})
        assert no_outcome.status_code == 422
        assert no_outcome.json()["detail"][0]["loc"] == ["body", "outcome"], no_outcome.text
        ok = await me.post(f"/api/v1/cases/{case_id}/milestones",
                           json={"authority_id": CP, "milestone": "emergency_measure"})
        assert ok.status_code == 202, ok.text

    async def done():
        async with stack.rt.db.reads() as session:
            m = await session.get(EscalationMilestone, (case_id, "emergency_measure"))
        return m if m is not None and m.done_at is not None else None

    m = await eventually(done)
    # A second click: answered as recorded, nothing sent (it was a second record on the
    # timeline, found by a review of a hotline day).
    async with stack.client("authority") as me:
        again = await me.post(f"/api/v1/cases/{case_id}/milestones",
                              json={"authority_id": CP, "milestone": "emergency_measure"})
    assert again.status_code == 200, again.text
    assert datetime.fromisoformat(again.json()["recorded_at"]) == m.done_at
    await _fire_all(stack, m.due_at + timedelta(minutes=1))
    assert not await _timeline(stack, case_id, "milestone_missed")
    assert len(await _timeline(stack, case_id, "milestone_recorded")) == 1

    async with stack.client("authority") as me:
        closed = await me.post(f"/api/v1/cases/{case_id}/milestones",
                               json={"authority_id": CP, "milestone": "case_closed",
                                     "outcome": "resolved"})
        assert closed.status_code == 202

    async def all_stopped():
        async with stack.rt.db.reads() as session:
            steps = (await session.scalars(select(MilestoneTimer).where(
                MilestoneTimer.case_id == case_id))).all()
        timers = [*await _timers(stack, case_id), *steps]
        return timers and all(t.fired_at is not None for t in timers)

    await eventually(all_stopped)
    async with stack.client("supervisor") as api:
        assert (await api.get(f"/api/v1/cases/{case_id}")).json()["status"] == "closed"
        # Its clocks have stopped, so it takes no more inputs: a new report opens a new case.
        update = await api.post(f"/api/v1/cases/{case_id}/updates",
                                json={"indicators": ["immediate_danger"]})
        assert update.status_code == 409, update.text
        linked = await api.post("/api/v1/reports", json=report(link_case_id=case_id))
        assert linked.status_code == 422
        assert linked.json()["detail"][0]["loc"] == ["body", "link_case_id"]
        assert "closed" in linked.json()["detail"][0]["msg"]
        fresh = await api.post("/api/v1/reports", json=report())
        assert fresh.status_code == 202 and fresh.json()["case_id"] != case_id


async def test_transfer_reroutes_and_duty_ends_when_new_authority_acknowledges(stack):
    neighbour = await _user(stack, "test-commune8", "authority", "commune:8", [ELSEWHERE])
    case_id, _ = await _p1_case(stack)
    async with stack.client(neighbour) as other:
        assert (await other.get(f"/api/v1/cases/{case_id}")).status_code == 403
    async with stack.client("authority") as me:
        to_self = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": CP, "reason": "wrong_jurisdiction"})
        assert to_self.status_code == 422
        not_mine = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": ELSEWHERE, "to_authority_id": CP, "reason": "other"})
        assert not_mine.status_code == 403
        answer = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": ELSEWHERE, "reason": "wrong_jurisdiction"})
        assert answer.status_code == 202, answer.text

    async def rerouted():
        new = await _target(stack, case_id, ELSEWHERE)
        return new if new is not None and new.role == "act" else None

    new = await eventually(rerouted)
    assert new.origin == "transfer" and new.ack_due is not None
    old = await _target(stack, case_id, CP)
    assert old.transferred_to == ELSEWHERE and old.released_at is None
    pending = [t for t in await _timers(stack, case_id)
               if t.authority_id == CP and t.kind == "breach" and t.fired_at is None]
    assert pending, "the first authority stays on the clock until the new one acknowledges"
    link = _link(stack, case_id, CP)  # the sender's link says where the case went, and who answers
    elsewhere = stack.rt.directory.get(ELSEWHERE).name
    await _readable_target(stack, case_id, CP, lambda t: t.get("transferred_to"))
    async with stack.client() as anonymous:
        page, click = await anonymous.get(link), await anonymous.post(link)
    assert "No acknowledgement is expected" not in page.text
    assert f"transferred to <b>{elsewhere}</b> <small>({ELSEWHERE})</small>" in page.text
    assert "remains responsible" in page.text and click.status_code == 409
    assert "remains responsible" in click.text

    async with stack.client(neighbour) as other:
        async def readable():
            return (await other.get(f"/api/v1/cases/{case_id}")).status_code == 200

        await eventually(readable)
        ack = await other.post(f"/api/v1/cases/{case_id}/acknowledgements",
                               json={"authority_id": ELSEWHERE})
        assert ack.status_code == 202, ack.text

    async def released():
        row = await _target(stack, case_id, CP)
        return row.released_at is not None

    await eventually(released)
    await _readable_target(stack, case_id, CP, lambda t: t.get("released"))
    async with stack.client() as anonymous:
        page = await anonymous.get(link)
    assert f"handed over to <b>{elsewhere}</b> <small>({ELSEWHERE})</small>, which acknowledged" \
        in page.text
    async with stack.rt.db.reads() as session:
        m = await session.get(EscalationMilestone, (case_id, "emergency_measure"))
    assert m.authority_id == ELSEWHERE  # the legal deadline moved with the duty
    await _fire_all(stack, utcnow() + timedelta(minutes=20))
    fired = [(t.authority_id, t.kind) for t in await _timers(stack, case_id)
             if t.outcome in ("fired", "overtaken")]
    assert not [f for f in fired if f[0] in (CP, ELSEWHERE)]
    assert (POLICE, "breach") in fired  # the other agency is still held to its window
    kinds = {e for e in ("target_transferred", "target_released")
             if await _timeline(stack, case_id, e)}
    assert kinds == {"target_transferred", "target_released"}


async def test_the_sender_of_a_transfer_is_not_shown_reminders_it_was_not_sent(stack):
    """Passed on, the commune is sent no reminder (timer outcome `transferred`): the case's
    timeline showed one all the same, as if sent. It is there, marked, and the commune's
    target does not show it as its step."""
    case_id, _ = await _p1_case(stack)
    async with stack.client("authority") as me:
        moved = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": ELSEWHERE, "reason": "wrong_jurisdiction"})
        assert moved.status_code == 202, moved.text
    await eventually(lambda: _target(stack, case_id, ELSEWHERE))
    await _readable_target(stack, case_id, CP, lambda t: t.get("transferred_to"))
    first = min(t.due_at for t in await _timers(stack, case_id)
                if t.authority_id == CP and t.kind == "reminder")
    await _fire_all(stack, first)  # its first reminder, on time: not overtaken
    assert [t.outcome for t in await _timers(stack, case_id)
            if t.authority_id == CP and t.due_at == first] == ["transferred"]

    async def reminded():
        steps = [s for s in await _timeline(stack, case_id, "target_escalated")
                 if s["authority_id"] == CP and s["step"] == "reminder"]
        return steps or None

    [step] = await eventually(reminded)
    assert step["outcome"] == "transferred"
    assert not [a for a in await _timeline(stack, case_id, "alert_requested")
                if a["authority_id"] == CP and a["kind"] == "reminder"]
    target = await _readable_target(stack, case_id, CP, lambda t: True)
    assert target["escalation"] is None


def _answers(authority_id: str) -> list[tuple[str, dict]]:
    """Everything an authority may do only while it holds the duty to act on a case."""
    return [("acknowledgements", {"authority_id": authority_id}),
            ("milestones", {"authority_id": authority_id, "milestone": "emergency_measure"}),
            ("milestones", {"authority_id": authority_id, "milestone": "case_closed",
                            "outcome": "resolved"}),
            ("transfers", {"from_authority_id": authority_id, "to_authority_id": POLICE,
                           "reason": "other"})]


async def test_only_an_authority_that_must_act_answers_for_the_case(stack):
    """An informed authority, and one that handed the case on, may not acknowledge, record a
    milestone or transfer: 403, in the audit trail as denied. (One that handed it on still
    records the milestones it is held to until the transfer is acknowledged: below.)"""
    province = await _user(stack, "test-province1", "authority", "province:1", [PROVINCE_CP])
    case_id, case = await _p1_case(stack)
    assert PROVINCE_CP in {t["authority_id"] for t in case["targets"] if t["role"] == "inform"}
    async with stack.client(province) as informed:
        for path, body in _answers(PROVINCE_CP):
            answer = await informed.post(f"/api/v1/cases/{case_id}/{path}", json=body)
            assert answer.status_code == 403, (path, body, answer.text)

    async with stack.client("authority") as me:
        moved = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": ELSEWHERE, "reason": "wrong_jurisdiction"})
        assert moved.status_code == 202, moved.text

        async def handed_on():
            targets = (await me.get(f"/api/v1/cases/{case_id}")).json()["targets"]
            return any(t["authority_id"] == CP and t.get("transferred_to") for t in targets)

        await eventually(handed_on)
        for path, body in _answers(CP):
            if body.get("milestone") == "emergency_measure":
                continue  # its own, still on its clock
            answer = await me.post(f"/api/v1/cases/{case_id}/{path}", json=body)
            assert answer.status_code == 403, (path, body, answer.text)

    async with stack.rt.db.reads() as session:
        denied = (await session.scalars(select(AuditRecord.user_id).where(
            AuditRecord.record == case_id, AuditRecord.outcome == "denied"))).all()
    assert sorted(denied) == sorted([province] * 4 + ["test-authority"] * 3)
    assert not await _timeline(stack, case_id, "milestone_recorded")
    async with stack.client("supervisor") as api:
        assert (await api.get(f"/api/v1/cases/{case_id}")).json()["status"] == "open"


async def _readable_target(stack, case_id: str, authority_id: str, ready) -> dict:
    """The authority's target as intake shows it, once `ready(target)` holds."""
    async def shown():
        async with stack.client("supervisor") as api:
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
        target = next((t for t in case["targets"] if t["authority_id"] == authority_id), None)
        return target if target is not None and ready(target) else None
    return await eventually(shown)


async def _answers_as(stack, who: str, case_id: str, authority_id: str) -> tuple[int, int]:
    """(acknowledgement, identity) status codes for that authority's user."""
    async with stack.client(who) as api:
        ack = await api.post(f"/api/v1/cases/{case_id}/acknowledgements",
                             json={"authority_id": authority_id})
        identity = await api.get(f"/api/v1/cases/{case_id}/identity")
    return ack.status_code, identity.status_code


async def test_the_tier_escalated_to_may_answer_for_the_case(stack):
    """Nobody acknowledged a P1 in time: escalation holds the province to it. Intake must let the
    province act too: acknowledge, see the identity, and be asked to acknowledge by its link."""
    province = await _user(stack, "u-province1", "authority", "province:1", [PROVINCE_CP])
    case_id, _ = await _p1_case(stack)
    await _fire_all(stack, utcnow() + timedelta(minutes=20))
    target = await _readable_target(stack, case_id, PROVINCE_CP,
                                    lambda t: t.get("alert") == "escalated")
    assert target["role"] == "act" and target["ack_due"]
    # Joined by an alert, not a decision: still every key, null where nothing happened yet.
    assert target["acknowledged_at"] is None and target["transferred_to"] is None
    link = sign_link(stack.base_url, case_id, "view", PROVINCE_CP, utcnow() + timedelta(days=1),
                     stack.rt.settings.secret("secret_key"))
    async with stack.client() as anyone:
        page = await anyone.get("/a/" + link.rsplit("/", 1)[1])
    assert "No acknowledgement is expected" not in page.text
    assert await _answers_as(stack, province, case_id, PROVINCE_CP) == (202, 200)


async def test_the_tier_escalated_to_shows_the_window_it_is_held_to(stack):
    """The province, made to act by a breach, is held to the commune's window from then: the
    case showed its deadline with `ack_within: null`, as if it had none (found by a review)."""
    case_id, case = await _p1_case(stack)
    [commune] = [t for t in case["targets"] if t["authority_id"] == CP]
    assert commune["ack_within"]
    await _fire_all(stack, utcnow() + timedelta(minutes=20))
    target = await _readable_target(stack, case_id, PROVINCE_CP,
                                    lambda t: t.get("alert") == "escalated")
    held = await _target(stack, case_id, PROVINCE_CP)
    assert held.origin == "escalated"
    assert (target["role"], target["ack_within"], target["working_days"]) == (
        "act", commune["ack_within"], commune["working_days"]) == ("act", held.ack_within,
                                                                   held.working_days)
    assert datetime.fromisoformat(target["ack_due"]) == held.ack_due


async def test_the_authority_a_case_is_transferred_to_shows_the_window_it_is_held_to(stack):
    case_id, case = await _p1_case(stack)
    [commune] = [t for t in case["targets"] if t["authority_id"] == CP]
    async with stack.client("authority") as me:
        moved = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": ELSEWHERE, "reason": "wrong_jurisdiction"})
        assert moved.status_code == 202, moved.text
    target = await _readable_target(stack, case_id, ELSEWHERE, lambda t: t["role"] == "act")
    held = await _target(stack, case_id, ELSEWHERE)
    assert (target["ack_within"], target["working_days"]) == (
        commune["ack_within"], commune["working_days"]) == (held.ack_within, held.working_days)
    assert datetime.fromisoformat(target["ack_due"]) == held.ack_due


async def test_lowering_publicity_leaves_a_duty_in_place(stack):
    """A supervisor lowers publicity from PA1 to PA0 (an operator may not: 403): the province
    stays held (escalation never drops a duty), so it may still acknowledge."""
    province = await _user(stack, "u-province1b", "authority", "province:1", [PROVINCE_CP])
    async with stack.client("operator") as operator:
        case_id = (await operator.post("/api/v1/reports",
                                       json=report(publicity="PA1"))).json()["case_id"]
        await _readable_target(stack, case_id, PROVINCE_CP, lambda t: t["role"] == "act")
        refused = await operator.post(f"/api/v1/cases/{case_id}/updates", json={"publicity": "PA0"})
        assert refused.status_code == 403 and "supervisor" in refused.text
    async with stack.client("supervisor") as api:
        assert (await api.post(f"/api/v1/cases/{case_id}/updates",
                               json={"publicity": "PA0"})).status_code == 202

        async def redecided():
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            return case if case["publicity"] == "PA0" else None
        case = await eventually(redecided)
    [target] = [t for t in case["targets"] if t["authority_id"] == PROVINCE_CP]
    assert target["role"] == "act" and target["ack_due"]
    assert (await _target(stack, case_id, PROVINCE_CP)).role == "act"
    assert await _answers_as(stack, province, case_id, PROVINCE_CP) == (202, 200)


@pytest.mark.parametrize("acked_first", [False, True])
async def test_a_case_handed_back_is_answered_again_by_its_first_authority(stack, acked_first):
    """A passes the case to B; B acknowledges (A released) and hands it back: A holds it again.
    Had A acknowledged before passing it on, that answered for a duty it handed on: the case
    waits for A, and A's acknowledgement is taken, not answered "already"."""
    b = await _user(stack, "u-commune8", "authority", "commune:8", [ELSEWHERE])
    case_id, _ = await _p1_case(stack)
    move = {"from_authority_id": CP, "to_authority_id": ELSEWHERE, "reason": "wrong_jurisdiction"}
    async with stack.client("authority") as a:
        if acked_first:
            assert (await a.post(f"/api/v1/cases/{case_id}/acknowledgements",
                                 json={"authority_id": CP})).status_code == 202
            await _readable_target(stack, case_id, CP, lambda t: t.get("acknowledged_at"))
        assert (await a.post(f"/api/v1/cases/{case_id}/transfers", json=move)).status_code == 202
    await _readable_target(stack, case_id, ELSEWHERE, lambda t: t["role"] == "act")
    async with stack.client(b) as api:
        assert (await api.post(f"/api/v1/cases/{case_id}/acknowledgements",
                               json={"authority_id": ELSEWHERE})).status_code == 202
        await _readable_target(stack, case_id, CP, lambda t: t.get("released"))
        back = {"from_authority_id": ELSEWHERE, "to_authority_id": CP, "reason": "wrong_jurisdiction"}
        assert (await api.post(f"/api/v1/cases/{case_id}/transfers", json=back)).status_code == 202
    target = await _readable_target(stack, case_id, CP, lambda t: t.get("transferred_from"))
    assert not target.get("released") and not target.get("transferred_to")
    assert target["acknowledged_at"] is None and target["ack_due"]
    async with stack.client("supervisor") as api:
        assert (await api.get(f"/api/v1/cases/{case_id}")).json()["acknowledged"] is False
    assert await _answers_as(stack, "authority", case_id, CP) == (202, 200)

    async def sender_released():  # A has taken it: B's duty ends
        row = await _target(stack, case_id, ELSEWHERE)
        return row is not None and row.released_at is not None
    await eventually(sender_released)


async def test_a_milestone_is_recorded_by_its_holder_and_only_the_lead_agency_closes(stack):
    """The police must act on the case too, but child protection holds the 12-hour emergency
    measure and leads the case: the police may record neither, nor close the case and so stop
    child protection's clocks."""
    police = await _user(stack, "u-police4", "authority", "commune:4", [POLICE])
    case_id, _ = await _p1_case(stack)

    async def scheduled():
        async with stack.rt.db.reads() as session:
            return await session.get(EscalationMilestone, (case_id, "emergency_measure"))
    assert (await eventually(scheduled)).authority_id == CP
    async with stack.client(police) as them:
        for body in ({"authority_id": POLICE, "milestone": "emergency_measure"},
                     {"authority_id": POLICE, "milestone": "case_closed", "outcome": "resolved"}):
            answer = await them.post(f"/api/v1/cases/{case_id}/milestones", json=body)
            assert answer.status_code == 403 and CP in answer.text, answer.text
    async with stack.rt.db.reads() as session:
        denied = (await session.scalars(select(AuditRecord.user_id).where(
            AuditRecord.record == case_id, AuditRecord.outcome == "denied"))).all()
        clocks = (await session.scalars(select(Timer).where(
            Timer.case_id == case_id, Timer.authority_id == CP))).all()
    assert denied == [police, police]
    assert clocks and all(t.fired_at is None for t in clocks)  # child protection still held
    async with stack.client("authority") as me:  # answers for both agencies of commune 4
        answer = await me.post(f"/api/v1/cases/{case_id}/milestones", json={
            "authority_id": CP, "milestone": "case_closed", "outcome": "resolved"})
        assert answer.status_code == 202, answer.text


async def test_a_second_locations_commune_may_not_close_the_case(stack):
    """A second location in another province adds that commune's child protection to the case
    (DOMAIN.md section 5); the commune where it happened still leads, and only it closes."""
    far_cp = "commune:1273:child_protection"  # province 4; sorts before commune:4 as text
    far = await _user(stack, "u-cp1273", "authority", "commune:1273", [far_cp])
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report(other_locations=[
            {"province_code": 4, "commune_code": 1273}]))).json()["case_id"]

        async def routed():
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            return {CP, far_cp} <= {t["authority_id"] for t in case["targets"]
                                    if t.get("role") == "act"}
        await eventually(routed)
    async with stack.client(far) as them:
        answer = await them.post(f"/api/v1/cases/{case_id}/milestones", json={
            "authority_id": far_cp, "milestone": "case_closed", "outcome": "resolved"})
    assert answer.status_code == 403 and CP in answer.text, answer.text


async def test_a_closed_case_takes_no_acknowledgement_and_its_link_says_so(stack):
    case_id, case = await _p1_case(stack)
    secret = stack.rt.settings.secret("secret_key")
    token = sign_link(stack.base_url, case_id, "view", POLICE, utcnow() + timedelta(days=7),
                      secret).rsplit("/", 1)[1]
    due = datetime.fromisoformat(next(t["ack_due"] for t in case["targets"]
                                      if t["authority_id"] == POLICE))
    async with stack.client() as anonymous:  # the deadline as the message gave it: VN time
        page = (await anonymous.get(f"/a/{token}")).text
    assert due.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).strftime("%H:%M %d/%m/%Y") in page
    async with stack.client("authority") as me:
        closed = await me.post(f"/api/v1/cases/{case_id}/milestones", json={
            "authority_id": CP, "milestone": "case_closed", "outcome": "resolved"})
        assert closed.status_code == 202, closed.text

        async def is_closed():
            return (await me.get(f"/api/v1/cases/{case_id}")).json()["status"] == "closed"
        await eventually(is_closed)
        late = await me.post(f"/api/v1/cases/{case_id}/acknowledgements",
                             json={"authority_id": POLICE})
    assert late.status_code == 409 and "closed" in late.text
    async with stack.client() as anonymous:
        page = await anonymous.get(f"/a/{token}")
        click = await anonymous.post(f"/a/{token}")
    assert page.status_code == 200 and "Case closed" in page.text and "<form" not in page.text
    # A browser's form post: the refusal is a page that says why, not a JSON error.
    assert click.status_code == 409 and "<h1>Vụ việc đã đóng / Case closed" in click.text
    assert click.headers["content-type"].startswith("text/html")
    assert (await _target(stack, case_id, POLICE)).acked_at is None


async def test_a_transfer_goes_sideways_not_up_a_tier(stack):
    """A commune that passes its duty to the national people's committee would end it there
    once that acknowledged: a higher tier is reached by escalation, not by a transfer."""
    case_id, _ = await _p1_case(stack)
    async with stack.client("authority") as me:
        up = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": "national:VN:people_committee",
            "reason": "other"})
        sideways = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": ELSEWHERE,
            "reason": "wrong_jurisdiction"})
    assert up.status_code == 422 and "to_authority_id" in up.text and "commune" in up.text
    assert sideways.status_code == 202, sideways.text



async def test_a_second_acknowledgement_is_answered_and_sends_nothing(stack):
    """A retry, or a colleague's second click: 200, recorded as replayed, and the timeline
    shows one acknowledgement. A body with a field the API does not know is refused."""
    case_id, _ = await _p1_case(stack)
    async with stack.client("authority") as me:
        extra = await me.post(f"/api/v1/cases/{case_id}/acknowledgements",
                              json={"authority_id": CP, "note": "seen"})
        assert extra.status_code == 422 and extra.json()["detail"][0]["loc"] == ["body", "note"]
    await _acknowledge_in_turn(stack, case_id, CP)
    await _readable_target(stack, case_id, CP, lambda t: t.get("acknowledged_at"))
    async with stack.client("authority") as me:
        again = await me.post(f"/api/v1/cases/{case_id}/acknowledgements",
                              json={"authority_id": CP})
    assert again.status_code == 200, again.text
    await _acknowledge_in_turn(stack, case_id, POLICE)  # taken after anything sent before
    assert len([e for e in await _timeline(stack, case_id, "target_acknowledged")
                if e["authority_id"] == CP]) == 1


async def test_transfers_sent_at_once_pass_the_duty_to_one_authority(stack):
    """Three transfers of one duty, sent together before the first took effect: one commune
    takes the duty (and may read the child's identity), not three."""
    case_id, _ = await _p1_case(stack)
    elsewhere = ["commune:8:police", "commune:25:police", "commune:73:police"]
    async with stack.client("authority") as me:
        answers = await asyncio.gather(*(me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": POLICE, "to_authority_id": to, "reason": "wrong_jurisdiction"})
            for to in elsewhere))
    assert all(a.status_code in (202, 403) for a in answers), [a.text for a in answers]
    sent = [to for to, a in zip(elsewhere, answers, strict=True) if a.status_code == 202]
    await _acknowledge_in_turn(stack, case_id, CP)  # every transfer sent has been taken
    police = await _target(stack, case_id, POLICE)
    async with stack.rt.db.reads() as session:
        holders = (await session.scalars(select(EscalationTarget.authority_id).where(
            EscalationTarget.case_id == case_id,
            EscalationTarget.authority_id.in_(elsewhere)))).all()
    assert police.transferred_to in sent and holders == [police.transferred_to]


async def test_a_transfer_does_not_merge_two_agencies_duties(stack):
    """The police may not hand their duty to child protection, which must act on the case
    already: its one acknowledgement would answer for both agencies. Nor to the people's
    committee, which supervises officers and takes no case."""
    case_id, _ = await _p1_case(stack)
    async with stack.client("authority") as me:
        merged = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": POLICE, "to_authority_id": CP, "reason": "wrong_agency"})
        committee = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": POLICE, "to_authority_id": "commune:4:people_committee",
            "reason": "wrong_agency"})
    for refused in (merged, committee):
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "to_authority_id"]
    assert "own agency" in merged.text
    # Had one reached escalation all the same (from an instance whose read model lagged),
    # it is ignored there too: child protection's acknowledgement leaves the police's duty.
    sneaked = TransferRequested(case_id=case_id, from_authority_id=POLICE, to_authority_id=CP,
                                reason="wrong_agency", by_user="test-authority", at=utcnow())
    await kafka.publish_input(stack.rt.producer, stack.rt.settings.topic(Topics.INPUTS),
                              Envelope.wrap(sneaked, submission.SOURCE))
    await _acknowledge_in_turn(stack, case_id, CP)
    police = await _target(stack, case_id, POLICE)
    assert police.transferred_to is None and police.released_at is None and police.acked_at is None


async def test_while_its_transfer_waits_the_sender_records_its_milestones(stack):
    """The sender stays on the clock until the new authority acknowledges, so the 12-hour
    emergency measure it took must be recordable: nobody could record it before."""
    case_id, _ = await _p1_case(stack)
    async with stack.client("authority") as me:
        sent = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": ELSEWHERE, "reason": "wrong_jurisdiction"})
        assert sent.status_code == 202, sent.text
        await _readable_target(stack, case_id, CP, lambda t: t.get("transferred_to"))
        # Joined by the transfer, not a decision: still a tier and an agency, as every target.
        joined = await _readable_target(stack, case_id, ELSEWHERE, lambda t: True)
        assert (joined["tier"], joined["agency"]) == ("commune", "child_protection")
        again = await me.post(f"/api/v1/cases/{case_id}/transfers", json={
            "from_authority_id": CP, "to_authority_id": "commune:25:child_protection",
            "reason": "wrong_jurisdiction"})
        done = await me.post(f"/api/v1/cases/{case_id}/milestones", json={
            "authority_id": CP, "milestone": "emergency_measure"})
    assert again.status_code == 403 and ELSEWHERE in again.json()["detail"]  # says why
    assert done.status_code == 202, done.text

    async def recorded():
        async with stack.rt.db.reads() as session:
            m = await session.get(EscalationMilestone, (case_id, "emergency_measure"))
        return m is not None and m.done_at is not None and m.done_authority_id == CP
    assert await eventually(recorded)


async def test_an_authority_lists_what_awaits_its_own_answer_and_what_is_overdue(stack,
                                                                               monkeypatch):
    """`?acknowledged=false` asked about the whole case: an officer who had answered still found
    the case in its list while another agency had not. And nobody could list the cases past an
    act deadline, whom the duty officer must call."""
    cp = await _user(stack, "u-cp4", "authority", "commune:4", [CP])
    police = await _user(stack, "u-police4", "authority", "commune:4", [POLICE])
    case_id, _ = await _p1_case(stack)  # both must act within 15 min
    async with stack.client(cp) as api:
        assert (await api.post(f"/api/v1/cases/{case_id}/acknowledgements",
                               json={"authority_id": CP})).status_code == 202
    await _readable_target(stack, case_id, CP, lambda t: t.get("acknowledged_at"))

    async def listed(who: str, query: str) -> bool:
        async with stack.client(who) as api:
            page = await api.get(f"/api/v1/cases?{query}&limit=200")
        assert page.status_code == 200, page.text
        return case_id in {c["case_id"] for c in page.json()["items"]}

    assert not await listed(cp, "acknowledged=false") and await listed(cp, "acknowledged=true")
    assert await listed(police, "acknowledged=false") and not await listed(police, "acknowledged=true")
    assert await listed("supervisor", "acknowledged=false")  # the case still waits for police
    assert not await listed("supervisor", "overdue=true")  # 15 minutes are not yet gone
    assert await listed("supervisor", "overdue=false")

    later = utcnow() + timedelta(minutes=16)
    monkeypatch.setattr("services.intake.api.cases.utcnow", lambda: later)
    assert await listed("supervisor", "overdue=true") and not await listed("supervisor", "overdue=false")
    assert await listed(police, "overdue=true") and not await listed(cp, "overdue=true")


async def test_a_step_s_reminder_does_not_hide_a_missed_acknowledgement(stack):
    """A target's `escalation` is where its acknowledgement's clock stands. Milestone reminders
    now come on the timeline too, and a later one showed "reminder" over the "breach" of an
    acknowledgement still not given."""
    case_id, _ = await _p1_case(stack)
    for step in (TargetEscalated(case_id=case_id, authority_id=CP, step="breach", fraction=1.0),
                 TargetEscalated(case_id=case_id, authority_id=CP, step="reminder",
                                 fraction=0.5, milestone="emergency_measure")):
        async with stack.rt.db.writes() as session, session.begin():
            await readmodel.apply(session, Envelope.wrap(step, "beacon/escalation"))
    async with stack.client("supervisor") as api:
        case = (await api.get(f"/api/v1/cases/{case_id}")).json()
    [target] = [t for t in case["targets"] if t["authority_id"] == CP]
    assert target["escalation"] == "breach"
    assert [e["detail"].get("milestone") for e in case["timeline"]
            if e["kind"] == "target_escalated"][-1] == "emergency_measure"

