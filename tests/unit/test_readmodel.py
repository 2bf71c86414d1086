"""The case read model applied in the orders the consumer can meet: it reads the inputs, cases,
alerts and deliveries topics together, with no order between them."""

from datetime import UTC, datetime

import pytest

from schemas.decisions import Decision, Target
from schemas.events import (
    AckRecorded, AlertRequested, CaseDecided, Envelope, ReportReceived, TargetReleased,
    TargetTransferred,
)
from services.intake import readmodel
from services.intake.store import CaseAuthority, CaseView

CASE = "C-AAAAAAAAAAAAAAAAA"
A, B = "commune:4:child_protection", "province:1:child_protection"
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def _report() -> Envelope:
    return Envelope.wrap(ReportReceived(
        case_id=CASE, report_id="R-1", new_case=True, received_at=NOW, channel="phone",
        category="PHYS_VIOLENCE", location={"province_code": 1, "commune_code": 4},
        setting="home", child_ages=[5]), "beacon/intake")


def _decided(severity: str = "P2") -> Envelope:
    return Envelope.wrap(CaseDecided(case_id=CASE, cause="beacon.report.received", decision=Decision(
        rulepack_version="v1", severity=severity, publicity="PA0", matched_rules=[],
        targets=[Target(tier="commune", agency="child_protection", authority_id=A,
                        role="act")])), "beacon/escalation")


async def _apply_one_by_one(db, envelopes) -> CaseView | None:
    for envelope in envelopes:
        async with db.writes() as session, session.begin():
            await readmodel.apply(session, envelope)
    async with db.reads() as session:
        return await session.get(CaseView, CASE)


@pytest.mark.parametrize("batched", [False, True])
async def test_a_decision_read_before_its_report_is_applied_when_the_report_comes(
        sqlite_db, batched):
    report, decided = _report(), _decided("P1")
    if batched:
        async with sqlite_db.writes() as session, session.begin():
            await readmodel.apply_all(session, [(decided, None), (report, None)])
        async with sqlite_db.reads() as session:
            case = await session.get(CaseView, CASE)
    else:
        case = await _apply_one_by_one(sqlite_db, [decided, report])
    assert case.severity == "P1"
    assert [t["authority_id"] for t in case.targets if t["role"] == "act"] == [A]
    async with sqlite_db.reads() as session:
        entries = {t.kind: t.detail for t in await readmodel.timeline(session, CASE)}
    assert sorted(entries) == ["case_decided", "report_received"]
    # A supervisor reads the case's calls by what each said (codes only).
    received = entries["report_received"]
    assert (received["setting"], received["child_ages"], received["indicators"]) == (
        "home", [5], [])
    # A redelivery of the decision changes nothing.
    again = await _apply_one_by_one(sqlite_db, [decided])
    assert again.severity == "P1"


async def test_a_re_decision_keeps_a_transferred_case_acknowledged(sqlite_db):
    """A passes the case to B, B acknowledges, A is released: a later re-decision that names A
    again does not make the case wait for A (escalation does not either)."""
    case = await _apply_one_by_one(sqlite_db, [
        _report(), _decided(),
        Envelope.wrap(TargetTransferred(case_id=CASE, from_authority_id=A, to_authority_id=B,
                                        reason="wrong_jurisdiction"), "beacon/escalation"),
        Envelope.wrap(AckRecorded(case_id=CASE, authority_id=B, by_user="u", at=NOW,
                                  case_acknowledged=True), "beacon/escalation"),
        Envelope.wrap(TargetReleased(case_id=CASE, authority_id=A, to_authority_id=B),
                      "beacon/escalation"),
        _decided(),
    ])
    assert case.acknowledged is True


@pytest.mark.parametrize("reopen_first", [False, True])
async def test_a_reopened_case_is_open_whichever_topic_comes_first(sqlite_db, reopen_first):
    """The closure is on the inputs topic, escalation's reopening on the cases topic: read in
    either order, the case is open and its authority must acknowledge again."""
    from datetime import timedelta

    from schemas.events import CaseReopened, MilestoneRecorded

    closed = Envelope.wrap(MilestoneRecorded(
        case_id=CASE, milestone="case_closed", authority_id=A, by_user="u",
        at=NOW + timedelta(hours=2), outcome="resolved"), "beacon/intake")
    reopened = Envelope.wrap(CaseReopened(
        case_id=CASE, at=NOW + timedelta(hours=3), cause="beacon.report.received",
        authority_ids=[A]), "beacon/escalation")
    reopened.time = NOW + timedelta(hours=3)
    acked = Envelope.wrap(AckRecorded(case_id=CASE, authority_id=A, by_user="u", at=NOW,
                                      case_acknowledged=True), "beacon/escalation")
    # Its new window, from the reopening: the case showed the old deadline, long passed, and
    # was listed as overdue the moment it reopened (found by the verification review).
    due = NOW + timedelta(hours=4)
    alerted = Envelope.wrap(AlertRequested(
        alert_id="a-1", case_id=CASE, authority_id=A, tier="commune", agency="child_protection",
        role="act", kind="alert", cause="reopened", category="PHYS_VIOLENCE", severity="P2",
        publicity="PA0", ack_due=due, contacts=[], rulepack_version="v1"), "beacon/escalation")
    first = Envelope.wrap(CaseDecided(
        case_id=CASE, cause="beacon.report.received", decision=Decision(
            rulepack_version="v1", severity="P2", publicity="PA0", matched_rules=[],
            targets=[Target(tier="commune", agency="child_protection", authority_id=A,
                            role="act", ack_due=NOW + timedelta(hours=1))])), "beacon/escalation")
    tail = [reopened, alerted, closed] if reopen_first else [closed, reopened, alerted]
    case = await _apply_one_by_one(sqlite_db, [_report(), first, acked, *tail])
    assert case.status == "open" and case.acknowledged is False
    [target] = case.targets
    assert target["acknowledged_at"] is None
    assert datetime.fromisoformat(target["ack_due"]) == due
    async with sqlite_db.reads() as session:
        duty = await session.get(CaseAuthority, (CASE, A))
    assert duty.awaiting and duty.ack_due == due


async def test_an_event_parked_while_its_case_was_being_opened_is_applied_late(sqlite_db):
    # Two instances on PostgreSQL: one parks the decision (no case yet, as it sees it) while
    # the other opens the case and finds nothing parked. Both commit: the decision waits for
    # ever, and the link of every authority it routed says "not valid". Reproduced by hand.
    async with sqlite_db.writes() as session, session.begin():
        await readmodel.apply(session, _decided("P1"))  # parked: no case yet
    async with sqlite_db.writes() as session, session.begin():
        readmodel._open(session, _report().payload(), NOW)  # opened, not unparked
    assert await readmodel.unpark_arrived(sqlite_db) == 1
    async with sqlite_db.reads() as session:
        case = await session.get(CaseView, CASE)
    assert case.severity == "P1" and [t["authority_id"] for t in case.targets] == [A]
    assert await readmodel.unpark_arrived(sqlite_db) == 0  # applied once


async def test_a_deadline_escalation_moved_later_is_shown(sqlite_db):
    """A case that alerts again after being information only (P5) holds its authorities from
    then: escalation says so in `changed`, and the case shows it, not the deadline long passed.
    A decision's later deadline alone puts nothing back."""
    first, later = NOW.replace(minute=15), NOW.replace(hour=12)

    def decided(due, changed):
        target = Target(tier="commune", agency="child_protection", authority_id=A, role="act",
                        ack_due=due)
        return Envelope.wrap(CaseDecided(
            case_id=CASE, cause="beacon.case.updated", changed=[target] if changed else [],
            decision=Decision(rulepack_version="v1", severity="P1", publicity="PA0",
                              matched_rules=[], targets=[target])), "beacon/escalation")

    await _apply_one_by_one(sqlite_db, [_report(), decided(first, changed=False)])
    held = await _apply_one_by_one(sqlite_db, [decided(later, changed=False)])
    assert held.targets[0]["ack_due"].startswith("2026-11-30T08:15")
    moved = await _apply_one_by_one(sqlite_db, [decided(later, changed=True)])
    assert moved.targets[0]["ack_due"].startswith("2026-11-30T12:00")


@pytest.mark.parametrize("alert_first", [False, True])
async def test_the_tier_up_escalated_to_holds_the_window_of_the_one_that_missed(
        sqlite_db, alert_first):
    """The step is on the cases topic, the tier up's alert on the alerts topic: read in either
    order, the province shows the commune's window and the alert's deadline. One that had a
    window of its own keeps it (escalation keeps its clock)."""
    from schemas.events import TargetEscalated

    due = NOW.replace(hour=9)
    decided = Envelope.wrap(CaseDecided(case_id=CASE, cause="beacon.report.received", decision=Decision(
        rulepack_version="v1", severity="P1", publicity="PA0", matched_rules=[], targets=[
            Target(tier="commune", agency="child_protection", authority_id=A, role="act",
                   ack_within="PT15M", ack_due=NOW.replace(minute=15)),
            Target(tier="province", agency="child_protection", authority_id=B, role="inform")])),
        "beacon/escalation")
    step = Envelope.wrap(TargetEscalated(case_id=CASE, authority_id=A, step="escalated",
                                         to_authority_id=B), "beacon/escalation")
    alert = Envelope.wrap(AlertRequested(
        alert_id="a-1", case_id=CASE, authority_id=B, tier="province", agency="child_protection",
        role="act", kind="escalated", category="PHYS_VIOLENCE", severity="P1", publicity="PA0",
        ack_due=due, contacts=[], rulepack_version="v1"), "beacon/escalation")
    case = await _apply_one_by_one(sqlite_db, [
        _report(), decided, *([alert, step] if alert_first else [step, alert])])
    province = next(t for t in case.targets if t["authority_id"] == B)
    assert (province["role"], province["ack_within"]) == ("act", "PT15M")
    assert datetime.fromisoformat(province["ack_due"]) == due
