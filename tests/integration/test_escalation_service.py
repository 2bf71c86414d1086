"""The escalation service on a database of its own (no broker): re-decisions, timers, breaches.

Inputs go straight to Escalation.handle; what it emits is read back from the outbox.
"""

import itertools
from datetime import UTC, datetime, time, timedelta
from unittest.mock import patch

import pytest
import structlog
from sqlalchemy import select, update

from schemas.events import (
    AlertRequested, CaseUpdated, DeliveryOutcome, Envelope, MilestoneRecorded, ReportReceived,
    TargetAcknowledged, TransferRequested,
)
from schemas.reports import Location
from services.common.outbox import OutboxRow
from services.escalation.directory import build_directory
from services.escalation.directory_admin import OverlayDirectory
from services.escalation import breaches as breaching, decisions, handlers, timers
from services.escalation.handlers import Escalation
from services.escalation.rulepack import load_pack
from services.escalation.store import (
    EscalationCase,
    EscalationMilestone,
    EscalationTarget,
    MilestoneTimer,
    Timer,
)
from services.notifier.render import fold_to_gsm7, render
from tests.support.packs import short_measure_pack

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # Wednesday 09:00 in Hanoi
M = timedelta(minutes=1)
CP, POLICE = "commune:4:child_protection", "commune:4:police"
PROVINCE_CP = "province:1:child_protection"


def _use(esc: Escalation, pack_name: str) -> None:
    """Put a shipped pack in force, as the pack watcher does."""
    esc.rt.pack = load_pack(pack_name)
    esc.rt.directory = build_directory(esc.rt.pack)


def _wrap(data, at: datetime) -> Envelope:
    envelope = Envelope.wrap(data, "beacon/intake")
    envelope.time = at
    return envelope


async def _report(esc, case_id: str = "C-1", at: datetime = T0, **fields) -> None:
    body = dict(case_id=case_id, report_id=f"R-{case_id}-{at.timestamp()}", new_case=True,
                received_at=at, channel="phone", category="PHYS_VIOLENCE",
                location=Location(province_code=1, commune_code=4), setting="home",
                child_ages=[10], indicators=[], publicity="PA0")
    await esc.handle([_wrap(ReportReceived(**{**body, **fields}), at)])


async def _update(esc, case_id: str = "C-1", at: datetime = T0 + 5 * M, **fields) -> None:
    update = CaseUpdated(case_id=case_id, update_id=f"U-{at.timestamp()}", by_role="operator",
                         **fields)
    await esc.handle([_wrap(update, at)])


async def _emitted(esc, kind: str | None = None) -> list[dict]:
    async with esc.rt.db.reads() as s:
        rows = (await s.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
    events = [Envelope.model_validate_json(r.payload) for r in rows]
    return [e.data for e in events if kind is None or e.type == kind]


async def _rows(esc, table, case_id: str = "C-1", **where) -> list:
    async with esc.rt.db.reads() as s:
        query = select(table).where(table.case_id == case_id)
        for name, value in where.items():
            query = query.where(getattr(table, name) == value)
        return list((await s.scalars(query)).all())


async def _case(esc, case_id: str = "C-1") -> EscalationCase:
    async with esc.rt.db.reads() as s:
        return await s.get(EscalationCase, case_id)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- publicity ------------------------------------------------------------------------------


async def test_publicity_is_not_raised_again_by_re_decisions(esc):
    # Institutional with staff_suspected: one level up, once (DOMAIN.md section 4).
    await _report(esc, setting="school", indicators=["staff_suspected"])
    assert (await _case(esc)).publicity == "PA1"
    await _update(esc, indicators=["crime"])  # nothing about publicity
    assert (await _case(esc)).publicity == "PA1"
    # The same rules published as a new version: cases decided under the old one are re-decided.
    esc.rt.pack = esc.rt.pack.model_copy(update={"version": "default-next"})
    # The module's logger itself: structlog caches it once configured (capture_logs would not see).
    with patch.object(decisions, "log") as log, patch.object(decisions, "PROGRESS_EVERY", 1):
        assert await esc.reevaluate_open("publication-1") == 1
    progress = [(c.kwargs.get("done"), c.kwargs["total"]) for c in log.info.call_args_list
                if c.args == ("reevaluating_open_cases",)]
    assert progress == [(None, 1), (1, 1)]  # a long pass says how far it is
    assert (await _case(esc)).publicity == "PA1"
    for decided in await _emitted(esc, "beacon.case.decided"):
        assert decided["decision"]["publicity"] == "PA1"
        assert "publicity.set_by_person" not in decided["decision"]["matched_rules"]


async def test_publicity_is_not_lowered_automatically_but_a_person_may_lower_it(esc):
    await _report(esc, setting="school", indicators=["staff_suspected"])
    # A pack without the step-up: the case keeps the level it had.
    pack = esc.rt.pack
    esc.rt.pack = pack.model_copy(update={
        "version": "no-step-up", "publicity": pack.publicity.model_copy(update={"step_up": []})})
    await esc.reevaluate_open("publication-1")
    case = await _case(esc)
    assert case.publicity == "PA1"
    decided = (await _emitted(esc, "beacon.case.decided"))[-1]["decision"]
    assert "publicity.kept" in decided["matched_rules"]
    assert "publicity.set_by_person" not in decided["matched_rules"]
    # A person sets PA2, then lowers it to PA0: only what the rules give is left (nothing here).
    await _update(esc, publicity="PA2")
    assert (await _case(esc)).publicity == "PA2"
    await _update(esc, at=T0 + 10 * M, publicity="PA0")
    assert (await _case(esc)).publicity == "PA0"


async def test_a_linked_report_from_a_school_brings_in_the_education_authority(esc):
    # The first report was at home; a second about the same child names the school.
    await _report(esc)
    assert not await _rows(esc, EscalationTarget, authority_id="province:1:education")
    await _report(esc, at=T0 + 30 * M, new_case=False, setting="school",
                  indicators=["staff_suspected"])
    [education] = await _rows(esc, EscalationTarget, authority_id="province:1:education")
    assert education.role == "act" and education.ack_due is not None
    case = await _case(esc)
    assert case.facts["setting"] == "home" and case.facts["other_settings"] == ["school"]
    assert case.publicity == "PA1"  # institutional, staff suspected: one level up
    decided = (await _emitted(esc, "beacon.case.decided"))[-1]["decision"]
    assert "additions.institutional.school" in decided["matched_rules"]


# --- re-decisions: what changed is told ------------------------------------------------------


async def test_a_target_whose_deadline_moves_earlier_is_alerted_and_its_timers_follow(esc):
    await _report(esc)  # PHYS_VIOLENCE, age 10: P2, commune child protection within 1 h
    first = await _emitted(esc, "beacon.alert.requested")
    assert [(a["authority_id"], a["kind"]) for a in first] == [
        (CP, "alert"), (PROVINCE_CP, "inform")]
    await _update(esc, indicators=["ongoing"])  # P1: 15 minutes from the update
    new_due = T0 + 20 * M
    told = {a["authority_id"]: a for a in (await _emitted(esc, "beacon.alert.requested"))[2:]}
    assert set(told) == {CP, POLICE}
    assert told[CP]["kind"] == "alert" and told[CP]["severity"] == "P1"
    assert _at(told[CP]["ack_due"]) == new_due
    assert told[CP]["alert_id"] != first[0]["alert_id"]  # the notifier would drop a repeat
    pending = sorted((t.kind, t.due_at) for t in await _rows(esc, Timer, authority_id=CP)
                     if t.fired_at is None)
    assert pending == [("breach", new_due), ("reminder", T0 + 5 * M + timedelta(seconds=450)),
                       ("reminder", T0 + 17 * M)]


async def test_a_higher_severity_is_told_to_targets_yet_to_answer(esc):
    # BULLYING P3: commune child protection within 1 working day (Thursday 09:00 local).
    await _report(esc, category="BULLYING")
    due = (await _rows(esc, EscalationTarget, authority_id=CP))[0].ack_due
    # Thursday 08:30: serious injury makes it P2, yet 1 h from now is later than the deadline.
    await _update(esc, at=due - 30 * M, indicators=["serious_injury"])
    decided = (await _emitted(esc, "beacon.case.decided"))[-1]
    assert decided["decision"]["severity"] == "P2" and decided["changed"] == []
    alerts = [a for a in await _emitted(esc, "beacon.alert.requested") if a["authority_id"] == CP]
    assert [(a["kind"], a["severity"], _at(a["ack_due"])) for a in alerts] == [
        ("alert", "P3", due), ("alert", "P2", due)]


async def test_a_milestone_deadline_moves_earlier_never_later(esc):
    await _report(esc, category="BULLYING")  # P3: initial assessment within 3 working days
    await _update(esc, indicators=["serious_injury"])  # P2: within 24 h of the first receipt
    [m] = await _rows(esc, EscalationMilestone, milestone="initial_assessment")
    assert m.due_at == T0 + timedelta(hours=24)
    steps = await _rows(esc, MilestoneTimer, milestone="initial_assessment")
    assert sorted(t.due_at for t in steps if t.fired_at is None) == [
        T0 + timedelta(hours=12), T0 + timedelta(hours=19.2), T0 + timedelta(hours=24)]
    assert {t.outcome for t in steps if t.fired_at is not None} == {"rescheduled"}
    scheduled = [e for e in await _emitted(esc, "beacon.milestone.scheduled")
                 if e["milestone"] == "initial_assessment"]
    assert _at(scheduled[-1]["due_at"]) == T0 + timedelta(hours=24)
    # A supervisor lowers the severity: the nearer deadline stands.
    await _update(esc, at=T0 + 10 * M, severity_override="P3")
    [m] = await _rows(esc, EscalationMilestone, milestone="initial_assessment")
    assert m.due_at == T0 + timedelta(hours=24)


# --- breaches ----------------------------------------------------------------------------------


async def test_a_breach_holds_a_parent_already_acting_to_the_same_window(esc):
    # P1 at PA1: the province already acts, within 2 h (04:00); the commune within 15 min.
    await _report(esc, indicators=["immediate_danger"], publicity="PA1")
    before = len(await _emitted(esc))
    now = T0 + 16 * M
    await esc.fire_due(now)
    new = (await _emitted(esc))[before:]
    assert {"case_id": "C-1", "authority_id": CP, "step": "escalated", "fraction": None,
            "to_authority_id": PROVINCE_CP, "milestone": None} in new
    escalated = [e for e in new if e.get("kind") == "escalated" and e["authority_id"] == PROVINCE_CP]
    assert len(escalated) == 1 and _at(escalated[0]["ack_due"]) == now + 15 * M
    [province] = await _rows(esc, EscalationTarget, authority_id=PROVINCE_CP)
    assert province.ack_due == now + 15 * M
    pending = [t for t in await _rows(esc, Timer, authority_id=PROVINCE_CP) if t.fired_at is None]
    assert sorted(t.due_at for t in pending if t.kind == "breach") == [now + 15 * M]


async def test_a_parent_that_acknowledged_is_told_of_the_breach_not_asked_again(esc):
    """P1 at PA1: the province acts and acknowledges within minutes; then the commune misses
    its 15 minutes. The province was asked to acknowledge again, by the deadline it had met."""
    await _report(esc, indicators=["immediate_danger"], publicity="PA1")
    await esc.handle([_wrap(TargetAcknowledged(case_id="C-1", authority_id=PROVINCE_CP,
                                               by_user="u-province", at=T0 + 5 * M), T0 + 5 * M)])
    before = len(await _emitted(esc))
    await esc.fire_due(T0 + 16 * M)
    new = (await _emitted(esc))[before:]
    [escalated] = [e for e in new
                   if e.get("kind") == "escalated" and e["authority_id"] == PROVINCE_CP]
    assert escalated["role"] == "inform"
    assert escalated["about_authority_id"] == CP
    [province] = await _rows(esc, EscalationTarget, authority_id=PROVINCE_CP)
    assert province.role == "act" and province.acked_at is not None
    assert not [t for t in await _rows(esc, Timer, authority_id=PROVINCE_CP) if t.fired_at is None]


@pytest.mark.parametrize("pack,ladder", [
    ("default", [("commune", "province", "Cap xa")]),
    ("vn2020", [("commune", "district", "Cap xa"), ("district", "province", "Cap huyen")])])
async def test_the_tier_up_is_told_which_tier_did_not_acknowledge(esc, pack, ladder):
    """The tier up read "Cấp dưới chưa xác nhận đúng hạn": under the 2020 pack a province
    could not tell a silent district from a silent commune. Each rung of the ladder names the
    tier below it, from the directory."""
    _use(esc, pack)
    await _report(esc, indicators=["immediate_danger"])  # P1: the commune acts within 15 min
    now = T0
    for below, up, says in ladder:
        now += 16 * M  # the tier below's 15 minutes, from when it was held to them, are over
        before = len(await _emitted(esc))
        while await esc.fire_due(now):
            pass
        [escalated] = [e for e in (await _emitted(esc))[before:] if e.get("kind") == "escalated"
                       and e["agency"] == "child_protection"]
        assert (escalated["tier"], escalated["about_tier"]) == (up, below)
        alert = AlertRequested.model_validate(escalated)
        sms = fold_to_gsm7(render(alert, "sms", "vi", "https://beacon.example.gov.vn/a/x").text)
        assert f"{says} chua xac nhan dung han." in sms
        email = render(alert, "email", "en", "https://beacon.example.gov.vn/a/x").text
        assert f"The {below} level did not acknowledge in time: " in email


async def test_a_parent_that_acknowledged_is_not_shown_the_deadline_it_met(esc):
    """Told for information that the commune missed its 15 minutes, then its 12-hour emergency
    measure, the province still got the acknowledgement deadline it had met: its webhook body
    gave it (11:00) as if to meet, and the notifier retried the alert until then like an act
    alert's."""
    await _report(esc, indicators=["immediate_danger"], publicity="PA1")  # province: ack in 2 h
    await esc.handle([_wrap(TargetAcknowledged(case_id="C-1", authority_id=PROVINCE_CP,
                                               by_user="u-province", at=T0 + 5 * M), T0 + 5 * M)])
    for now in (T0 + 16 * M, T0 + timedelta(hours=13)):
        while await esc.fire_due(now):
            pass
    told = [e for e in await _emitted(esc, "beacon.alert.requested")
            if e["kind"] == "escalated" and e["authority_id"] == PROVINCE_CP]
    assert [e["milestone"] for e in told] == [None, "emergency_measure"]
    for data in told:
        assert (data["role"], data["ack_due"]) == ("inform", None)
        alert = AlertRequested.model_validate(data)
        body = render(alert, "webhook", "vi", "https://beacon.example.gov.vn/a/x").body
        assert body["ack_due"] is None and body["ack_due_local"] is None
        for channel, lang in itertools.product(("email", "sms"), ("vi", "en")):
            assert "11:00" not in render(alert, channel, lang, "L").text
    # A supervisor is still told the deadline that was missed: it is what it is told of.
    supervisor = [e for e in await _emitted(esc, "beacon.alert.requested")
                  if e["kind"] == "supervisor" and e["about_authority_id"] == CP
                  and not e["milestone"]]
    assert supervisor and all(_at(e["ack_due"]) == T0 + 15 * M for e in supervisor)


@pytest.mark.parametrize("on_breach", [["supervisors"], ["next_tier"], []])
async def test_a_breach_takes_the_steps_the_pack_names(esc, on_breach):
    pack = esc.rt.pack
    esc.rt.pack = pack.model_copy(update={"escalation": pack.escalation.model_copy(
        update={"on_breach": on_breach})})
    await _report(esc, indicators=["immediate_danger"])  # P1: the commune acts within 15 min
    before = len(await _emitted(esc))
    await esc.fire_due(T0 + 16 * M)
    new = (await _emitted(esc))[before:]
    told = {e["authority_id"] for e in new if e.get("kind") == "supervisor"}
    raised = {e["to_authority_id"] for e in new if e.get("step") == "escalated"}
    assert bool(told) == ("supervisors" in on_breach)
    assert (PROVINCE_CP in raised) == ("next_tier" in on_breach)
    assert any(e.get("step") == "breach" for e in new)  # on the timeline either way
    # Each message says who did not acknowledge; a supervisor has nothing to acknowledge.
    for e in new:
        if e.get("kind") in ("supervisor", "escalated"):
            assert e["about_authority_id"] in (CP, "commune:4:police"), e
            assert e["role"] == ("inform" if e["kind"] == "supervisor" else "act"), e


async def test_an_act_alert_unreached_after_its_tries_escalates_once(esc):
    # The notifier goes on trying until the deadline; escalation does not wait for it.
    for case_id in ("C-1", "C-2"):
        await _report(esc, case_id, indicators=["immediate_danger"])

    async def outcome(case_id: str, status: str, attempt: int) -> list[dict]:
        before = len(await _emitted(esc))
        await esc.handle([_wrap(DeliveryOutcome(
            alert_id=f"{case_id}:{CP}:alert", case_id=case_id, authority_id=CP, role="act",
            kind="alert", status=status, channel="webhook", attempt=attempt,
            error="http_503"), T0 + attempt * M)])
        return [e for e in (await _emitted(esc))[before:] if e.get("step") == "breach"]

    assert await outcome("C-1", "failed", breaching.UNREACHED_AFTER - 1) == []
    assert len(await outcome("C-1", "failed", breaching.UNREACHED_AFTER)) == 1
    assert await outcome("C-1", "dead_lettered", breaching.UNREACHED_AFTER + 30) == []  # not twice
    # Dead-lettered before its UNREACHED_AFTER-th try (say, every contact refused it for good).
    before = len(await _emitted(esc))
    assert len(await outcome("C-2", "dead_lettered", 3)) == 1
    told = [e for e in (await _emitted(esc))[before:] if e.get("kind") == "supervisor"]
    assert told and all(e["about_reason"] == "unreachable" and e["about_authority_id"] == CP
                        for e in told)  # not told it missed a deadline still to come
    # Another of its alerts refused for good too: the same unreached target, not a second breach.
    assert await outcome("C-2", "dead_lettered", 2) == []
    # Its deadline passes unanswered: escalated once already, so no second breach, nor a second
    # round of supervisor and next-tier alerts.
    before = len(await _emitted(esc))
    await esc.fire_due(T0 + 3 * 60 * M)
    again = [e for e in (await _emitted(esc))[before:] if e.get("case_id") in ("C-1", "C-2")
             and (e.get("step") == "breach" or e.get("kind") in ("supervisor", "escalated"))
             and CP in (e.get("authority_id"), e.get("alert_id", "").split(":undelivered:")[-1])]
    assert again == []
    # The other way round: breached at its deadline, then found unreached: not escalated again.
    await _report(esc, "C-4", at=T0 + 4 * 60 * M, indicators=["immediate_danger"])
    await esc.fire_due(T0 + 8 * 60 * M)
    assert await outcome("C-4", "failed", breaching.UNREACHED_AFTER) == []

    # A closed case has no duty left to escalate.
    await _report(esc, "C-3", indicators=["immediate_danger"])
    async with esc.rt.db.writes() as session, session.begin():
        await session.execute(update(EscalationCase).where(EscalationCase.case_id == "C-3")
                              .values(closed_at=T0 + 5 * M))
    assert await outcome("C-3", "failed", breaching.UNREACHED_AFTER) == []


async def test_each_unreached_target_is_told_to_a_supervisor_they_share(esc):
    # Child protection and police both act on a P1; one people's committee supervises both.
    await _report(esc, indicators=["immediate_danger"])
    acting = {t.authority_id for t in await _rows(esc, EscalationTarget, role="act")}
    assert {CP, POLICE} <= acting
    before = len(await _emitted(esc))
    for authority in (CP, POLICE):
        await esc.handle([_wrap(DeliveryOutcome(
            alert_id=f"C-1:{authority}:alert", case_id="C-1", authority_id=authority, role="act",
            kind="alert", status="dead_lettered", channel="webhook", attempt=3,
            error="http_410"), T0 + 5 * M)])
    new = (await _emitted(esc))[before:]
    told = [e["alert_id"] for e in new if e.get("kind") == "supervisor"]
    assert len(told) == len(set(told)) == 2  # one each, under ids the notifier keeps apart
    assert {e["authority_id"] for e in new if e.get("kind") == "supervisor"} == {
        "commune:4:people_committee"}


async def test_working_day_reminders_fall_on_working_days(esc):
    # A P3 received on Friday 16:00 in Hanoi: one working day to acknowledge (Monday 16:00),
    # three to assess (Wednesday 16:00). No reminder on the weekend, nor out of office hours.
    friday = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    await _report(esc, at=friday, category="EMOTIONAL")
    hanoi = timedelta(hours=7)
    reminders = [t.due_at for t in await _rows(esc, Timer, authority_id=CP, kind="reminder")]
    milestone = [t.due_at for t in await _rows(esc, MilestoneTimer, milestone="initial_assessment")
                 if t.fraction < 1]
    assert sorted(reminders) == [datetime(2026, 11, 30, 4, 15, tzinfo=UTC),  # Monday 11:15
                                 datetime(2026, 11, 30, 7, 6, tzinfo=UTC)]  # Monday 14:06
    assert len(milestone) == 2
    assert all((at + hanoi).weekday() < 5 for at in [*reminders, *milestone])
    assert all(time(7, 30) <= (at + hanoi).time() <= time(17) for at in [*reminders, *milestone])


# --- timers ------------------------------------------------------------------------------------


async def test_a_timer_that_cannot_fire_holds_back_no_other(esc, monkeypatch):
    # A fault in one case's breach (a bug, a row it cannot read): its timers fail every time.
    await _report(esc, "C-OLD", indicators=["immediate_danger"])
    await _report(esc, "C-NEW", at=T0 + M, indicators=["immediate_danger"])
    fire = handlers.Escalation._fire

    async def poisoned_fire(self, session, timer, now):
        if timer.case_id == "C-OLD" and timer.kind == "breach":
            raise RuntimeError("poisoned")
        await fire(self, session, timer, now)
    monkeypatch.setattr(handlers.Escalation, "_fire", poisoned_fire)
    old = await _rows(esc, Timer, "C-OLD")
    poisoned = [t.id for t in old if t.kind == "breach"]
    assert poisoned and len(old) > len(poisoned)

    now = T0 + timedelta(hours=5)  # every timer of both cases is overdue
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        # A logger made now sees the capture (the service's logger is cached on first use).
        for module in (timers, breaching):
            monkeypatch.setattr(module, "log", structlog.get_logger("beacon.escalation"))
        assert await esc.fire_due(now) > 0
    new = await _rows(esc, Timer, "C-NEW")
    assert {(t.authority_id, t.kind) for t in new if t.outcome == "fired"} >= {
        (CP, "breach"), (POLICE, "breach")}
    failed = [e for e in logs if e["event"] == "timer_failed"]
    assert {e["timer_id"] for e in failed} == set(poisoned)
    # Its reminders are overtaken by its breach (all overdue): no message.
    assert {t.outcome for t in await _rows(esc, Timer, "C-OLD") if t.kind == "reminder"} == {
        "overtaken"}
    assert all(e["case_id"] == "C-OLD" and e["log_level"] == "error" and e["exc_info"]
               for e in failed)

    def waiting(rows):
        return {t.id: (t.attempts, t.due_at) for t in rows if t.id in poisoned and t.fired_at is None}

    # Put back, not dropped: retried after 1 minute, then after 2.
    assert waiting(await _rows(esc, Timer, "C-OLD")) == {i: (1, now + M) for i in poisoned}
    await esc.fire_due(now + 30 * timedelta(seconds=1))
    assert waiting(await _rows(esc, Timer, "C-OLD")) == {i: (1, now + M) for i in poisoned}
    await esc.fire_due(now + M)
    assert waiting(await _rows(esc, Timer, "C-OLD")) == {i: (2, now + 3 * M) for i in poisoned}
    # At most an hour apart, however many times it failed.
    async with esc.rt.db.writes() as s, s.begin():
        await s.execute(update(Timer).where(Timer.id.in_(poisoned)).values(attempts=100))
    later = now + timedelta(hours=2)
    await esc.fire_due(later)
    assert waiting(await _rows(esc, Timer, "C-OLD")) == {
        i: (101, later + timedelta(hours=1)) for i in poisoned}


async def test_a_breach_of_an_authority_no_longer_in_the_directory_is_reported_once(esc, monkeypatch):
    # A case routed under the 2020 pack has a district target; the default pack, put in force
    # since, has no district tier: nobody is known to remind, nor above it to tell.
    _use(esc, "vn2020")
    await _report(esc, "C-OLD", indicators=["immediate_danger"], publicity="PA1")
    _use(esc, "default")
    district = [t for t in await _rows(esc, Timer, "C-OLD") if t.authority_id.startswith("district:")]
    assert any(t.kind == "breach" for t in district)
    # And the 12-hour measure passed to that district (as a transfer it acknowledged does).
    holder = district[0].authority_id
    async with esc.rt.db.writes() as s, s.begin():
        for table in (EscalationMilestone, MilestoneTimer):
            await s.execute(update(table).where(table.case_id == "C-OLD",
                                                table.milestone == "emergency_measure")
                            .values(authority_id=holder))
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        for module in (timers, breaching):
            monkeypatch.setattr(module, "log", structlog.get_logger("beacon.escalation"))
        await esc.fire_due(T0 + timedelta(hours=5))
        await esc.fire_due(T0 + timedelta(hours=13))  # the 12-hour measure too; nothing put back
    rows = [t for t in await _rows(esc, Timer, "C-OLD") if t.authority_id.startswith("district:")]
    assert all(t.fired_at is not None for t in rows)
    assert {t.outcome for t in rows if t.kind == "breach"} == {"not_in_directory"}
    assert not [e for e in logs if e["event"] == "timer_failed"]
    told = [e for e in logs if e["event"] == "breach_unescalated"
            and e["authority_id"].startswith("district:")]
    assert {e["authority_id"] for e in told} == {t.authority_id for t in rows if t.kind == "breach"}
    assert [e["reason"] for e in told].count("deadline_missed") == len(
        {t.authority_id for t in rows if t.kind == "breach"})
    assert all(e["log_level"] == "error" and "directory" in e["why"] for e in told)
    measure = await _rows(esc, MilestoneTimer, "C-OLD", milestone="emergency_measure")
    assert measure and {t.outcome for t in measure} == {"not_in_directory"}
    [missed] = [e for e in await _emitted(esc, "beacon.milestone.missed")
                if e["case_id"] == "C-OLD"]
    assert (missed["authority_id"], missed["to_authority_id"]) == (holder, None)
    assert [e["reason"] for e in told if e["authority_id"] == holder].count("milestone_missed") == 1


async def test_reminders_overtaken_while_escalation_was_down_are_not_sent(esc):
    # Timers that come due together (escalation was down past the deadline): the breach says
    # all there is to say; the 50% and 80% reminders before it would be noise in the same second.
    await _report(esc, indicators=["immediate_danger"])
    before = len(await _emitted(esc))
    await esc.fire_due(T0 + 3 * 60 * M)
    late = (await _emitted(esc))[before:]
    assert not [e for e in late if e.get("kind") == "reminder" and e["authority_id"] == CP]
    assert [(e["step"], e["fraction"]) for e in late if e.get("step") and e["authority_id"] == CP
            ] == [("reminder", 0.5), ("reminder", 0.8), ("breach", 1.0), ("escalated", None)]
    reminders = await _rows(esc, Timer, authority_id=CP, kind="reminder")
    assert reminders and {t.outcome for t in reminders} == {"overtaken"}
    # On time, each reminder goes out.
    await _report(esc, "C-2", indicators=["immediate_danger"])
    [first, *_] = sorted(t.due_at for t in await _rows(esc, Timer, "C-2", authority_id=CP,
                                                        kind="reminder"))
    before = len(await _emitted(esc))
    await esc.fire_due(first)
    assert [e["kind"] for e in (await _emitted(esc))[before:]
            if e.get("kind") and e["authority_id"] == CP] == ["reminder"]


def _milestone_told(events: list[dict], authority_id: str = CP) -> list[dict]:
    return [e for e in events if e.get("kind") and e.get("milestone") == "emergency_measure"
            and e["authority_id"] == authority_id]


async def test_a_report_entered_after_its_emergency_measure_was_due_sends_no_stale_reminder(
        esc, tmp_path):
    """Entered 11 minutes after the call, under a pack whose emergency measure takes 10: the
    commune got the new alert, then twice "Phai hoan thanh Bien phap bao ve khan cap truoc
    12:51", the deadline gone (found by the day-in-the-life review). Its 50% and 80% reminders
    are on the timeline, overtaken; the holder is told the step is overdue."""
    _use(esc, str(short_measure_pack(tmp_path)))
    received = T0 - 11 * M
    await _report(esc, received_at=received, category="SEX_ABUSE",
                  indicators=["caregiver_is_abuser"])
    [m] = await _rows(esc, EscalationMilestone, milestone="emergency_measure")
    assert (m.authority_id, m.due_at) == (CP, received + 10 * M)  # gone already
    before = len(await _emitted(esc))
    await esc.fire_due(T0 + timedelta(seconds=1))
    late = (await _emitted(esc))[before:]
    told = _milestone_told(late)
    assert [e["kind"] for e in told] == ["breach"]  # one message, no reminder
    steps = [(e["step"], e["fraction"], e["milestone"]) for e in late
             if e.get("step") and e["authority_id"] == CP]
    assert steps[:2] == [("reminder", 0.5, "emergency_measure"), ("reminder", 0.8, "emergency_measure")]
    timers = await _rows(esc, MilestoneTimer, milestone="emergency_measure")
    assert sorted((t.fraction, t.outcome) for t in timers) == [
        (0.5, "overtaken"), (0.8, "overtaken"), (1.0, "fired")]
    # What the commune reads: the step overdue since its deadline, not one to complete by then.
    sms = fold_to_gsm7(render(AlertRequested.model_validate(told[0]), "sms", "vi",
                              "https://beacon.example.gov.vn/a/x").text)
    assert "Da qua han Bien phap bao ve khan cap tu 08:59 25/11, de nghi thuc hien ngay." in sms
    assert "Phai hoan thanh" not in sms and "Xac nhan" not in sms
    # The supervisors and the tier up are told as before.
    assert {e["kind"] for e in late if e.get("kind") and e["milestone"] == "emergency_measure"} == {
        "breach", "supervisor", "escalated"}


async def test_a_reminder_overtaken_by_the_next_still_to_come_goes_once(esc, tmp_path):
    # Entered 9 minutes late: the 50% (5 min) and 80% (8 min) reminders are both due, the
    # deadline a minute away. One reminder goes, telling it as still to come.
    _use(esc, str(short_measure_pack(tmp_path)))
    await _report(esc, received_at=T0 - 9 * M, category="SEX_ABUSE",
                  indicators=["caregiver_is_abuser"])
    before = len(await _emitted(esc))
    await esc.fire_due(T0 + timedelta(seconds=1))
    late = (await _emitted(esc))[before:]
    [reminder] = _milestone_told(late)
    assert reminder["kind"] == "reminder" and reminder["alert_id"].endswith(
        str(next(t.id for t in await _rows(esc, MilestoneTimer, milestone="emergency_measure")
                 if t.fraction == 0.8)))
    sms = fold_to_gsm7(render(AlertRequested.model_validate(reminder), "sms", "vi", "L").text)
    assert "Phai hoan thanh Bien phap bao ve khan cap truoc 09:01 25/11." in sms
    assert [(e["fraction"], e["milestone"]) for e in late if e.get("step") == "reminder"
            and e["authority_id"] == CP and e["milestone"]] == [
        (0.5, "emergency_measure"), (0.8, "emergency_measure")]
    assert not await _emitted(esc, "beacon.milestone.missed")


@pytest.mark.parametrize("transferred", [False, True])
async def test_the_holder_is_told_its_own_milestone_was_missed(esc, transferred):
    """Its supervisors and the tier up were told the commune missed the 12-hour emergency
    measure; the commune, which must still take it, was not. Told also when its transfer
    awaits the new authority: until then it still holds the step, and alone may record it."""
    await _report(esc, indicators=["immediate_danger"])
    await esc.handle([_wrap(TargetAcknowledged(case_id="C-1", authority_id=CP, by_user="u",
                                               at=T0 + 5 * M), T0 + 5 * M)])
    if transferred:
        await esc.handle([_wrap(TransferRequested(
            case_id="C-1", from_authority_id=CP, to_authority_id="commune:8:child_protection",
            reason="wrong_jurisdiction", by_user="u", at=T0 + 6 * M), T0 + 6 * M)])
    before = len(await _emitted(esc))
    while await esc.fire_due(T0 + timedelta(hours=12, minutes=1)):
        pass
    late = (await _emitted(esc))[before:]
    [own] = [e for e in _milestone_told(late) if e["kind"] == "breach"]
    assert own["role"] == "act" and own["about_authority_id"] is None
    assert _at(own["milestone_due"]) == T0 + timedelta(hours=12)
    for lang, says in (("vi", "Da qua han Bien phap bao ve khan cap tu 21:00 25/11"),
                       ("en", "Emergency protection measure overdue since 21:00 25/11")):
        sms = render(AlertRequested.model_validate(own), "sms", lang, "L").text
        assert says in fold_to_gsm7(sms) and "09:15" not in sms  # not the acknowledgement's
    [missed] = [e for e in late if "milestone" in e and "to_authority_id" in e
                and "step" not in e]
    assert (missed["authority_id"], missed["to_authority_id"]) == (CP, PROVINCE_CP)


async def test_closing_a_case_routed_under_an_earlier_pack_tells_whom_it_can(esc):
    # Routed under the 2020 pack, the case holds a district target the default pack's directory
    # no longer has: the close still goes through, and the others are told.
    _use(esc, "vn2020")
    await _report(esc, "C-OLD", indicators=["immediate_danger"], publicity="PA1")
    _use(esc, "default")
    acting = {t.authority_id for t in await _rows(esc, EscalationTarget, "C-OLD", role="act")}
    assert any(a.startswith("district:") for a in acting)
    before = len(await _emitted(esc))
    await esc.handle([_wrap(MilestoneRecorded(
        case_id="C-OLD", milestone="case_closed", authority_id=CP, by_user="u", at=T0 + M,
        outcome="resolved"), T0 + M)])
    [case] = await _rows(esc, EscalationCase, "C-OLD")
    assert case.closed_at is not None
    told = {e["authority_id"] for e in (await _emitted(esc))[before:] if e.get("kind") == "closed"}
    assert told == {a for a in acting - {CP} if not a.startswith("district:")} and told


async def test_alerts_carry_the_names_the_pack_in_force_gives(esc):
    # Under the 2020 pack, child protection was Labour, Invalids and Social Affairs: its
    # officers' messages must say so, whatever the notifier's own names are.
    _use(esc, "vn2020")
    await _report(esc, "C-2020", indicators=["immediate_danger"])
    alerts = [e for e in await _emitted(esc) if e.get("kind") == "alert"]
    cp = next(a for a in alerts if a["agency"] == "child_protection")
    assert cp["agency_label"] == {"vi": "Lao động - Thương binh và Xã hội",
                                  "en": "Labour, Invalids and Social Affairs (child protection)"}
    assert cp["category_label"] == {"vi": "Bạo lực thể chất", "en": "Physical violence"}
    assert cp["setting"] == "home"  # where it happened, as the report gave it


@pytest.mark.parametrize("pack", ["default", "vn2020"])
async def test_a_milestone_alert_carries_the_names_the_pack_gives_the_step(esc, pack):
    """English messages named the step by its code (`emergency_measure`): the pack had a
    Vietnamese label only, which is all the alert carried."""
    _use(esc, pack)
    await _report(esc, indicators=["immediate_danger"])  # P1: the 12-hour emergency measure
    await esc.fire_due(T0 + timedelta(hours=7))  # its 50% reminder
    told = [e for e in await _emitted(esc, "beacon.alert.requested") if e["milestone"]]
    assert told and all(
        (e["milestone"], e["milestone_label"], e["milestone_name"]) == (
            "emergency_measure", "Biện pháp bảo vệ khẩn cấp", "Emergency protection measure")
        for e in told)


async def test_a_breach_tells_the_silent_authority_and_the_top_of_the_ladder_is_flagged(
        esc, monkeypatch):
    # P1 with national attention: national child protection must act within 2 h. It has no
    # supervisor and no tier above, so its silence can only be flagged to the hotline.
    national = "national:VN:child_protection"
    await _report(esc, "C-TOP", indicators=["immediate_danger"], publicity="PA2")
    acting = {t.authority_id for t in await _rows(esc, EscalationTarget, "C-TOP", role="act")}
    assert national in acting and CP in acting
    before = len(await _emitted(esc))
    with structlog.testing.capture_logs() as logs:
        for module in (timers, breaching):
            monkeypatch.setattr(module, "log", structlog.get_logger("beacon.escalation"))
        while await esc.fire_due(T0 + timedelta(hours=3)):
            pass
    breaches = [e["authority_id"] for e in (await _emitted(esc))[before:]
                if e.get("kind") == "breach"]
    assert breaches.count(CP) == breaches.count(national) == 1  # each silent one told, once
    top = [e["authority_id"] for e in logs if e["event"] == "breach_unescalated"]
    assert top == [national]  # the commune's and province's breaches climbed


async def test_a_breach_climbs_past_an_admin_entry_that_names_a_tier_since_abolished(esc):
    """Commune police's entry, saved by an admin under the 2020 pack, names its district as
    parent; the default pack, in force since, has none. The P1 breach failed on it at every
    retry and nobody above was told (found by an admin's review)."""
    esc.rt.directory = OverlayDirectory(build_directory(esc.rt.pack))
    police = esc.rt.directory.get(POLICE)
    esc.rt.directory.entries = {POLICE: police.model_copy(update={
        "parent": "district:1-01:police", "supervisors": []})}
    await _report(esc, indicators=["immediate_danger"])  # P1: commune police acts in 15 min
    await esc.fire_due(T0 + timedelta(minutes=16))
    assert not [t for t in await _rows(esc, Timer, authority_id=POLICE) if t.attempts]
    escalated = [e for e in await _emitted(esc, "beacon.alert.requested")
                 if e["kind"] == "escalated"]
    assert "province:1:police" in {e["authority_id"] for e in escalated}


# --- what a breach tells the authority that missed, and who the tiers are ---------------------


@pytest.mark.parametrize("on_breach,supervisors,tier,vi,en", [
    (["supervisors", "next_tier"], True, "province", "; cơ quan quản lý và cấp tỉnh đã được báo.",
     "; your supervisors and the province level have been told."),
    (["supervisors"], True, None, "; cơ quan quản lý đã được báo.", "; your supervisors have been told."),
    (["next_tier"], False, "province", "; cấp tỉnh đã được báo.", "; the province level has been told."),
    ([], False, None, "Đề nghị xác nhận đã tiếp nhận ngay.", "Please acknowledge now.")])
async def test_a_breach_tells_the_authority_only_who_was_told(esc, on_breach, supervisors, tier,
                                                              vi, en):
    """The commune's e-mail said "your supervisors and the tier above have been told" under a
    pack that told neither: a message to a child-protection officer must only say what is so."""
    pack = esc.rt.pack
    esc.rt.pack = pack.model_copy(update={"escalation": pack.escalation.model_copy(
        update={"on_breach": on_breach})})
    await _report(esc, indicators=["immediate_danger"])  # P1: the commune acts within 15 min
    await esc.fire_due(T0 + 16 * M)
    [breach] = [e for e in await _emitted(esc, "beacon.alert.requested")
                if e["kind"] == "breach" and e["authority_id"] == CP]
    assert (breach["told_supervisors"], breach["told_tier"]) == (supervisors, tier)
    alert = AlertRequested.model_validate(breach)
    for lang, says in (("vi", vi), ("en", en)):
        email = render(alert, "email", lang, "L").text
        assert says in email, email
        assert "cấp trên" not in email and "tier above" not in email


async def test_a_breach_does_not_claim_a_tier_up_that_passed_its_duty_on(esc, monkeypatch):
    """The province passed the case to another province, which acknowledged: the province is
    released and not told of the commune's breach. The commune's e-mail still said the
    province level had been told; with no supervisors either, nobody was, and nothing said so."""
    pack = esc.rt.pack
    esc.rt.pack = pack.model_copy(update={"escalation": pack.escalation.model_copy(
        update={"on_breach": ["next_tier"]})})
    await _report(esc, indicators=["immediate_danger"], publicity="PA1")  # the province acts
    other = "province:4:child_protection"
    await esc.handle([_wrap(TransferRequested(
        case_id="C-1", from_authority_id=PROVINCE_CP, to_authority_id=other,
        reason="wrong_jurisdiction", by_user="u", at=T0 + 2 * M), T0 + 2 * M)])
    await esc.handle([_wrap(TargetAcknowledged(case_id="C-1", authority_id=other, by_user="u2",
                                               at=T0 + 3 * M), T0 + 3 * M)])
    [province] = await _rows(esc, EscalationTarget, authority_id=PROVINCE_CP)
    assert province.released_at is not None
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(breaching, "log", structlog.get_logger("beacon.escalation"))
        await esc.fire_due(T0 + 16 * M)
    [breach] = [e for e in await _emitted(esc, "beacon.alert.requested")
                if e["kind"] == "breach" and e["authority_id"] == CP]
    assert (breach["told_supervisors"], breach["told_tier"]) == (False, None)
    assert "đã được báo" not in render(AlertRequested.model_validate(breach), "email", "vi", "L").text
    flagged = [e["authority_id"] for e in logs if e["event"] == "breach_unescalated"]
    assert flagged == [CP]  # the hotline's duty officer hears of it


async def test_the_national_tier_is_not_told_a_tier_above_was(esc):
    """National has no tier above and no supervisor in the directory: its breach tells nobody."""
    await _report(esc, indicators=["immediate_danger"], publicity="PA2")  # national acts, 2 h
    national = "national:VN:child_protection"
    while await esc.fire_due(T0 + 2 * 60 * M + M):
        pass
    [breach] = [e for e in await _emitted(esc, "beacon.alert.requested")
                if e["kind"] == "breach" and e["authority_id"] == national]
    assert (breach["told_supervisors"], breach["told_tier"]) == (False, None)
    email = render(AlertRequested.model_validate(breach), "email", "vi", "L").text
    assert "Đề nghị xác nhận đã tiếp nhận ngay." in email and "đã được báo" not in email


async def test_alerts_carry_the_pack_s_names_of_the_tiers(esc):
    """The notifier named tiers from a table of its own: a pack's tier it did not know read as
    its id ("cấp ward"). The alert carries the pack's names, as it does an agency's."""
    _use(esc, "vn2020")
    pack = esc.rt.pack
    ladder = [t.model_copy(update={"label": "quận, huyện", "name": "urban or rural district"})
              if t.id == "district" else t for t in pack.ladder]
    esc.rt.pack = pack.model_copy(update={"ladder": ladder})
    await _report(esc, indicators=["immediate_danger"])
    while await esc.fire_due(T0 + 16 * M):  # the commune misses its 15 minutes
        pass
    alerts = await _emitted(esc, "beacon.alert.requested")
    [escalated] = [e for e in alerts if e["kind"] == "escalated"
                   and e["authority_id"].startswith("district:") and e["agency"] == "child_protection"]
    assert escalated["tier_label"] == {"vi": "quận, huyện", "en": "urban or rural district"}
    assert escalated["about_tier_label"] == {"vi": "xã", "en": "commune"}
    alert = AlertRequested.model_validate(escalated)
    assert ", cấp quận, huyện, mã " in render(alert, "email", "vi", "L").text
    assert "urban or rural district level" in render(alert, "email", "en", "L").text
    [breach] = [e for e in alerts if e["kind"] == "breach" and e["authority_id"] == CP]
    assert (breach["told_tier"], breach["told_tier_label"]) == (
        "district", {"vi": "quận, huyện", "en": "urban or rural district"})
    assert "cơ quan quản lý và cấp quận, huyện đã được báo." in render(
        AlertRequested.model_validate(breach), "email", "vi", "L").text
