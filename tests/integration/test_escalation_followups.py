"""Escalation's handlers in process on a real SQLite file (no Kafka, but for the restart test):
transfers and their acknowledgements, linked reports, follow-ups and re-evaluation across rule
packs. Time is given to each input, so nothing here sleeps."""

from datetime import UTC, datetime
from pathlib import Path

from schemas.events import (
    CaseUpdated, Envelope, MilestoneRecorded, ReportReceived, RulePackPublished,
    TargetAcknowledged, Topics, TransferRequested,
)
from schemas.reports import Location
from services.escalation.rulepack import SHIPPED, parse_pack
from services.escalation.store import (
    EscalationCase, EscalationMilestone, EscalationTarget, MilestoneTimer, Timer,
)
from tests.integration.test_escalation_service import (
    CP, PROVINCE_CP, T0, M, _case as case, _emitted as emitted, _report as report, _rows, _update as update,
    _use, _wrap as wrap,
)

CP8, CP25 = "commune:8:child_protection", "commune:25:child_protection"
# The default pack under a later version: a publication of it re-decides open cases.
NEXT_DEFAULT = Path(SHIPPED["default"]).read_text("utf-8").replace(
    "version: default-2026.5", "version: default-2026.6")


async def ack(esc, authority: str, at: datetime) -> None:
    await esc.handle([wrap(TargetAcknowledged(case_id="C-1", authority_id=authority,
                                              by_user="u", at=at), at)])


async def transfer(esc, frm: str, to: str, at: datetime) -> None:
    await esc.handle([wrap(TransferRequested(case_id="C-1", from_authority_id=frm,
                                             to_authority_id=to, reason="wrong_jurisdiction",
                                             by_user="u", at=at), at)])


ALERT = "beacon.alert.requested"


async def alerts_after(esc, before: int) -> list[tuple[str, str]]:
    """(kind, authority) of the alerts emitted after the first `before`."""
    return [(e["kind"], e["authority_id"]) for e in (await emitted(esc, ALERT))[before:]]


async def targets(esc, case_id="C-1") -> dict[str, EscalationTarget]:
    return {t.authority_id: t for t in await _rows(esc, EscalationTarget, case_id)}


async def test_a_case_handed_back_is_held_to_its_clock_again(esc):
    await report(esc)  # P2: the commune's child protection acts within 1 h
    await transfer(esc, CP, CP8, T0 + 5 * M)
    await ack(esc, CP8, T0 + 6 * M)  # CP is released
    await transfer(esc, CP8, CP, T0 + 7 * M)  # and CP8 hands it back
    row = (await targets(esc))[CP]
    assert row.released_at is None and row.role == "act" and row.acked_at is None
    before = len(await emitted(esc, "beacon.target.escalated"))
    await esc.fire_due(T0 + 3 * 60 * M)
    steps = [(e["step"], e["authority_id"])
             for e in (await emitted(esc, "beacon.target.escalated"))[before:]]
    assert ("breach", CP) in steps  # its clock runs


async def test_a_case_handed_back_after_its_acknowledgement_is_asked_for_again(esc):
    # CP acknowledged, passed the case to CP8, which took it; CP8 hands it back. CP's old
    # acknowledgement answered for a duty it handed on: it must hear the case is back.
    await report(esc)
    await ack(esc, CP, T0 + 2 * M)
    await transfer(esc, CP, CP8, T0 + 5 * M)
    await ack(esc, CP8, T0 + 6 * M)  # CP is released
    before = len(await emitted(esc, ALERT))
    await transfer(esc, CP8, CP, T0 + 7 * M)
    rows = await targets(esc)
    assert rows[CP].acked_at is None and rows[CP].released_at is None
    assert rows[CP8].released_at is None  # CP8 answers for it until CP takes it
    assert ("alert", CP) in await alerts_after(esc, before)
    before = len(await emitted(esc, "beacon.target.escalated"))
    await esc.fire_due(T0 + 3 * 60 * M)
    steps = [(e["step"], e["authority_id"])
             for e in (await emitted(esc, "beacon.target.escalated"))[before:]]
    assert ("breach", CP) in steps  # its clock runs from the hand-back


async def test_a_breach_after_a_transfer_names_the_authority_that_has_not_answered(esc):
    # CP passed the case to CP8, which has not acknowledged by CP's deadline: CP's supervisor
    # and the province are told of CP8's silence, not asked to chase CP, which may not answer.
    await report(esc)  # P2: CP acts within 1 h
    await transfer(esc, CP, CP8, T0 + 30 * M)  # CP8's window runs from then, to T0 + 90 min
    before = len(await emitted(esc, ALERT))
    await esc.fire_due(T0 + 61 * M)
    told = [a for a in (await emitted(esc, ALERT))[before:]
            if a["kind"] in ("supervisor", "escalated")]
    assert told and {a["about_authority_id"] for a in told} == {CP8}
    assert {a["about_reason"] for a in told} == {"deadline_missed"}
    # Named as the directory names them: an id alone does not say which commune.
    assert {a["about_authority_name"] for a in told} == {esc.rt.directory.get(CP8).name}
    assert all(a["authority_name"] == esc.rt.directory.get(a["authority_id"]).name for a in told)


async def test_an_acknowledgement_at_the_end_of_a_chain_of_transfers_releases_it_all(esc):
    await report(esc)
    await transfer(esc, CP, CP8, T0 + 5 * M)
    await transfer(esc, CP8, CP25, T0 + 6 * M)
    await ack(esc, CP25, T0 + 7 * M)
    rows = await targets(esc)
    assert rows[CP].released_at is not None and rows[CP8].released_at is not None
    [recorded] = await emitted(esc, "beacon.ack.recorded")
    assert recorded["case_acknowledged"] is True
    before = len(await emitted(esc, ALERT))
    await esc.fire_due(T0 + 3 * 60 * M)
    assert not [a for a in await alerts_after(esc, before) if a[1] in (CP, CP8)]


async def test_a_linked_report_from_another_province_brings_its_commune_in(esc):
    # DOMAIN 5: a second location in another province makes both communes targets.
    await report(esc)
    await report(esc, at=T0 + 10 * M, new_case=False,
                 location=Location(province_code=79, commune_code=26506))
    assert "commune:26506:child_protection" in await targets(esc)


async def test_a_linked_report_naming_other_places_is_decided(esc):
    # Merging the places once failed on every such report (a Location is not hashable).
    await report(esc, other_locations=[Location(province_code=1, commune_code=8)])
    await report(esc, at=T0 + 10 * M, new_case=False, other_locations=[
        Location(province_code=1, commune_code=8), Location(province_code=79, commune_code=26506)])
    assert (await case(esc)).decisions == 2
    assert "commune:26506:child_protection" in await targets(esc)


def pack_with(base, version: str, **category_defaults):
    categories = dict(base.categories)
    for code, severity in category_defaults.items():
        categories[code] = categories[code].model_copy(update={"default": severity})
    return base.model_copy(update={"version": version, "categories": categories})


async def test_a_follow_up_on_a_case_routed_under_an_earlier_pack_is_decided(esc):
    _use(esc, "vn2020")
    await report(esc, category="BULLYING", publicity="PA1")
    district = [a for a in await targets(esc) if a.startswith("district:")]
    assert district
    _use(esc, "default")  # district tier abolished: not in the directory
    await esc.handle([wrap(CaseUpdated(case_id="C-1", update_id="U1", by_role="operator",
                                       indicators=["immediate_danger"]), T0 + 5 * M)])
    assert (await case(esc)).severity == "P1"


async def test_one_case_that_cannot_be_re_decided_holds_back_no_other(esc, monkeypatch):
    await report(esc, "C-A", category="BULLYING")
    await report(esc, "C-B", at=T0 + M, category="BULLYING")
    esc.rt.pack = pack_with(esc.rt.pack, "bullying-p2", BULLYING="P2")
    decide = esc._decide

    async def fails_for_a(session, c, *args, **kw):
        if c.case_id == "C-A":
            raise RuntimeError("a case that cannot be decided")
        return await decide(session, c, *args, **kw)

    monkeypatch.setattr(esc, "_decide", fails_for_a)
    assert await esc.reevaluate_open("pub-1") == 1
    assert (await case(esc, "C-B")).severity == "P2"
    assert (await case(esc, "C-A")).rulepack_version != "bullying-p2"
    monkeypatch.setattr(esc, "_decide", decide)  # put right: the next pass takes it
    assert await esc.reevaluate_open("pub-1") == 1
    assert (await case(esc, "C-A")).severity == "P2"


async def test_cases_decided_under_the_pack_in_force_are_not_re_decided(esc):
    await report(esc, "C-A")
    esc.rt.pack = pack_with(esc.rt.pack, "next")
    await report(esc, "C-B", at=T0 + M)  # opened under the new pack
    assert await esc.reevaluate_open("pub-1") == 1  # C-A only
    assert (await case(esc, "C-B")).decisions == 1


async def test_a_restart_after_a_re_evaluating_publication_starts(kafka_bootstrap, tmp_path):
    """Re-evaluation at start-up once needed the outbox relay before it was made."""
    from aiokafka import AIOKafkaProducer

    from services import runtime
    from services.common import kafka
    from services.escalation.packs_store import sha256
    from tests.conftest import make_settings, migrate

    url = f"sqlite+aiosqlite:///{tmp_path / 'restart.db'}"
    await migrate(url)
    settings = make_settings(kafka_bootstrap, url)
    await kafka.ensure_topics(settings)
    rt = runtime.build(settings, frozenset({"escalation"}))
    await runtime.start(rt)
    try:
        await rt.parts["escalation"].handle([wrap(ReportReceived(
            case_id="C-1", report_id="R-1", new_case=True, received_at=T0, channel="phone",
            category="PHYS_VIOLENCE", location=Location(province_code=1, commune_code=4),
            setting="home", child_ages=[10]), T0)])
    finally:
        await runtime.stop(rt)

    text = NEXT_DEFAULT
    version = parse_pack(text, "test").version
    now = datetime.now(UTC)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await kafka.publish_input(producer, settings.topic(Topics.RULEPACKS), Envelope.wrap(
            RulePackPublished(version=version, sha256=sha256(text), text=text,
                              effective_at=now - M, published_at=now - M, published_by="admin",
                              reevaluate_open=True), "beacon/intake"))
    finally:
        await producer.stop()

    rt = runtime.build(settings, frozenset({"escalation"}))
    await runtime.start(rt)  # re-decides C-1 under default-2026.5 before consuming
    try:
        async with rt.db.reads() as s:
            assert (await s.get(EscalationCase, "C-1")).rulepack_version == version
    finally:
        await runtime.stop(rt)


async def test_a_linked_report_of_another_category_raises_and_routes_by_it(esc):
    await report(esc, category="NEGLECT")  # P3: the commune's child protection only
    await report(esc, at=T0 + 10 * M, new_case=False, category="SEX_ABUSE")
    c = await case(esc)
    assert c.severity == "P1"  # SEX_ABUSE's default (DOMAIN 3)
    rows = await targets(esc)
    assert rows["commune:4:police"].role == "act" and rows["commune:4:health"].role == "act"
    assert c.facts["category"] == "NEGLECT" and c.facts["other_categories"] == ["SEX_ABUSE"]
    # Health, brought in by the report of sexual abuse, is told of it, not of neglect.
    [health] = [a for a in await emitted(esc, ALERT) if a["authority_id"] == "commune:4:health"]
    assert health["category"] == "SEX_ABUSE" and health["category_label"]["en"] == "Sexual abuse"


async def close(esc, at: datetime) -> None:
    await esc.handle([wrap(MilestoneRecorded(case_id="C-1", milestone="case_closed",
                                             authority_id=CP, by_user="u", at=at,
                                             outcome="resolved"), at)])


async def test_a_report_reaching_a_case_closed_an_instant_before_reopens_it(esc):
    """Intake linked the report to the case in the instant before it learnt of the closure. The
    report was accepted, so it is enforced: the case is open again, the authority that must act
    is alerted and held to acknowledge afresh, and the milestones run from this report."""
    await report(esc)  # P2: commune child protection acts within 1 h; assessment within 24 h
    await ack(esc, CP, T0 + 5 * M)
    await close(esc, T0 + 2 * 60 * M)
    assert (await case(esc)).closed_at is not None
    before = len(await emitted(esc, ALERT))
    later = T0 + 3 * 60 * M
    await report(esc, at=later, new_case=False)  # the same facts: nothing new to route
    assert (await case(esc)).closed_at is None
    [reopened] = await emitted(esc, "beacon.case.reopened")
    assert reopened["authority_ids"] == [CP]
    row = (await targets(esc))[CP]
    assert row.acked_at is None and row.ack_due > later
    assert ("alert", CP) in await alerts_after(esc, before)
    # Its clock runs: unanswered, it is reminded and breached like any target. (Fired at
    # half its hour: reminders all due at once with their deadline go unsent, overtaken.)
    before = len(await emitted(esc, ALERT))
    await esc.fire_due(later + 30 * M)
    assert ("reminder", CP) in await alerts_after(esc, before)
    await esc.fire_due(later + 24 * 60 * M)
    assert ("breach", CP) in await alerts_after(esc, before)
    # The assessment not done before closing is due again, counted from this report.
    [assessment] = [m for m in await _rows(esc, EscalationMilestone)
                    if m.milestone == "initial_assessment"]
    assert assessment.done_at is None and assessment.due_at > later
    # And the case can be closed again.
    await close(esc, later + 30 * 60 * M)
    assert (await case(esc)).closed_at is not None


async def test_a_follow_up_reaching_a_closed_case_reopens_it(esc):
    await report(esc)
    await close(esc, T0 + 60 * M)
    await esc.handle([wrap(CaseUpdated(case_id="C-1", update_id="U-9", by_role="operator",
                                       indicators=["ongoing"]), T0 + 2 * 60 * M)])
    assert (await case(esc)).closed_at is None
    assert [e["cause"] for e in await emitted(esc, "beacon.case.reopened")] == [
        "beacon.case.updated"]


async def test_the_commune_where_it_happened_holds_the_milestones_not_a_second_location(esc):
    # DOMAIN 2 and 5: a second location in another province adds its commune as a target; the
    # emergency measure and the police check stay with the commune where it happened, even when
    # the other commune's id sorts first (1273 < 4 as text).
    elsewhere = Location(province_code=4, commune_code=1273)
    await report(esc, category="SEX_ABUSE", setting="school", indicators=["staff_suspected"],
                 other_locations=[elsewhere])
    assert "commune:1273:child_protection" in await targets(esc)
    holders = {m.milestone: m.authority_id for m in await _rows(esc, EscalationMilestone)}
    assert holders["emergency_measure"] == CP
    assert holders["police_verification"] == "commune:4:police"


async def test_closing_a_case_tells_every_other_authority_held_to_it(esc):
    # One agency's close stops every clock on the case: the others must hear of it, not just
    # stop being reminded.
    await report(esc, indicators=["serious_injury"])  # P1: child protection and police act
    acting = {a for a, t in (await targets(esc)).items() if t.role == "act"}
    assert {CP, "commune:4:police"} <= acting
    before = len(await emitted(esc, ALERT))
    await esc.handle([wrap(MilestoneRecorded(
        case_id="C-1", milestone="case_closed", authority_id=CP, by_user="u", at=T0 + 30 * M,
        outcome="resolved"), T0 + 30 * M)])
    news = [e for e in (await emitted(esc, ALERT))[before:]]
    assert sorted(e["authority_id"] for e in news) == sorted(acting - {CP})
    assert {(e["kind"], e["role"], e["ack_due"]) for e in news} == {("closed", "inform", None)}


async def test_a_supervisors_downgrade_does_not_hide_an_emergency_reported_since(esc):
    # DOMAIN 2: a caregiver who is the abuser, a child in immediate danger: emergency measures
    # within 12 hours, whatever a supervisor judged of the earlier, milder facts.
    await report(esc, category="NEGLECT", indicators=[])
    await update(esc, at=T0 + 5 * M, severity_override="P4", override_reason_given=True)
    [*_, downgraded] = await emitted(esc, "beacon.case.decided")
    assert downgraded["decision"]["severity"] == "P4"
    await update(esc, at=T0 + 9 * M, publicity="PA1")  # nothing more severe: it holds
    [*_, held] = await emitted(esc, "beacon.case.decided")
    assert held["decision"]["severity"] == "P4"
    await report(esc, at=T0 + 10 * M, new_case=False, category="NEGLECT",
                 indicators=["caregiver_is_abuser"])
    [*_, raised] = await emitted(esc, "beacon.case.decided")
    assert raised["decision"]["severity"] == "P1"
    assert "severity.override_lapsed" in raised["decision"]["matched_rules"]
    assert "commune:4:police" in await targets(esc)
    held_to = {m.milestone for m in await _rows(esc, EscalationMilestone)}
    assert "emergency_measure" in held_to


async def test_a_downgrade_of_an_emergency_ends_when_another_is_reported(esc):
    # The caregiver is the abuser (P1); a supervisor lowers the case to P3 ("the caller
    # retracted"); then the child is reported in immediate danger: a new emergency.
    await report(esc, category="EMOTIONAL", indicators=["caregiver_is_abuser"])
    await update(esc, at=T0 + 5 * M, severity_override="P3", override_reason_given=True)
    [*_, downgraded] = await emitted(esc, "beacon.case.decided")
    assert downgraded["decision"]["severity"] == "P3"
    await update(esc, at=T0 + 9 * M, indicators=["immediate_danger"])
    [*_, raised] = await emitted(esc, "beacon.case.decided")
    assert raised["decision"]["severity"] == "P1"
    assert "severity.override_lapsed" in raised["decision"]["matched_rules"]


async def test_a_case_a_supervisor_makes_information_only_chases_nobody_until_it_is_again(esc):
    """A duplicate, set to P5 ("information only: no alert", DOMAIN.md section 3): its
    reminders, breaches and the emergency measure's deadline went on, up to national. A fact
    reported since that makes it an emergency again holds everyone to it again, from then."""
    await report(esc, indicators=["caregiver_is_abuser"])  # P1: CP and police within 15 min
    await update(esc, at=T0 + 2 * M, severity_override="P5", override_reason_given=True)
    [*_, quiet] = await emitted(esc, "beacon.case.decided")
    assert quiet["decision"]["severity"] == "P5"
    before = len(await emitted(esc, ALERT))
    steps = len(await emitted(esc, "beacon.target.escalated"))
    await esc.fire_due(T0 + 13 * 60 * M)  # past every deadline, the 12-hour one too
    assert await alerts_after(esc, before) == []
    assert (await emitted(esc, "beacon.target.escalated"))[steps:] == []
    assert await emitted(esc, "beacon.milestone.missed") == []

    again = T0 + 14 * 60 * M
    await update(esc, at=again, indicators=["immediate_danger"])
    [*_, raised] = await emitted(esc, "beacon.case.decided")
    assert raised["decision"]["severity"] == "P1"
    told = await alerts_after(esc, before)
    assert ("alert", CP) in told and ("alert", "commune:4:police") in told
    assert (await targets(esc))[CP].ack_due == again + 15 * M
    # The case's read model follows the decision's changes: the new deadline, not the passed one.
    changed = {t["authority_id"]: t["ack_due"] for t in raised["changed"]}
    assert datetime.fromisoformat(changed[CP]) == again + 15 * M
    await esc.fire_due(again + 1 * M)  # the emergency measure's 12 h passed meanwhile
    assert [m["milestone"] for m in await emitted(esc, "beacon.milestone.missed")] == [
        "emergency_measure"]
    await esc.fire_due(again + 16 * M)
    breached = [e["authority_id"] for e in (await emitted(esc, "beacon.target.escalated"))[steps:]
                if e["step"] == "breach"]
    assert CP in breached


async def test_a_transfer_of_an_information_only_case_starts_no_clock(esc):
    """A P5 case handed to another commune: its clocks climbed to national all the same."""
    await report(esc)  # P2
    await update(esc, at=T0 + 2 * M, severity_override="P5", override_reason_given=True)
    await transfer(esc, CP, CP8, T0 + 3 * M)
    steps = len(await emitted(esc, "beacon.target.escalated"))
    await esc.fire_due(T0 + 24 * 60 * M)
    assert (await emitted(esc, "beacon.target.escalated"))[steps:] == []
    assert {t.outcome for t in await _rows(esc, Timer, authority_id=CP8)} == {"information_only"}


async def test_a_case_made_more_severe_during_a_transfer_asks_the_receiver_not_the_sender(esc):
    """The sender can no longer acknowledge (its transfer awaits the receiver's answer): asked
    to acknowledge sooner, it could do nothing."""
    await report(esc)  # P2
    await transfer(esc, CP, CP8, T0 + 3 * M)
    before = len(await emitted(esc, ALERT))
    await update(esc, at=T0 + 5 * M, indicators=["immediate_danger"])  # P1
    told = await alerts_after(esc, before)
    assert ("alert", CP8) in told and ("alert", CP) not in told


async def test_an_authority_that_passed_the_case_on_is_not_asked_to_acknowledge(esc):
    # It can no longer acknowledge (its duty waits on the new authority's answer): reminders go
    # to the new authority; its own breach still fires, should nobody answer.
    await report(esc)  # P2: commune child protection acts within 1 h
    await transfer(esc, CP, CP8, T0 + 5 * M)
    first = min(t.due_at for t in await _rows(esc, Timer, authority_id=CP, kind="reminder"))
    before = len(await emitted(esc, ALERT))
    await esc.fire_due(first)
    assert ("reminder", CP) not in await alerts_after(esc, before)
    await esc.fire_due(T0 + 3 * 60 * M)
    steps = [(e["step"], e["authority_id"]) for e in await emitted(esc, "beacon.target.escalated")]
    assert ("breach", CP) in steps and ("breach", CP8) in steps


async def test_an_acknowledgement_sent_with_a_transfer_does_not_stop_the_clock(esc):
    # Both sent at once by the sender: the transfer is taken first (one partition per case).
    # Taken after it, the acknowledgement would mark the sender answered and silence its
    # breach, although the commune it passed the case to has not answered.
    await report(esc)  # P2: CP acts within 1 h
    await transfer(esc, CP, CP8, T0 + 5 * M)
    await ack(esc, CP, T0 + 5 * M)
    rows = await targets(esc)
    assert rows[CP].acked_at is None and rows[CP8].acked_at is None
    assert not await emitted(esc, "beacon.ack.recorded")
    before = len(await emitted(esc, ALERT))
    await esc.fire_due(T0 + 61 * M)
    assert any(a["kind"] == "supervisor" and a["about_authority_id"] == CP8
               for a in (await emitted(esc, ALERT))[before:])  # its breach still fires


async def told(esc, before: int, authority: str) -> dict:
    [alert] = [a for a in (await emitted(esc, ALERT))[before:]
               if a["kind"] == "alert" and a["authority_id"] == authority]
    return alert


async def test_an_authority_alerted_again_is_told_why(esc):
    """A raise, a transfer, a reopening and a case alerting again each reached the officer as
    one more "new alert", which did not say what had changed."""
    await report(esc)  # P2: CP acts within 1 h
    first = await told(esc, 0, CP)
    assert first["cause"] is None and first["previous_severity"] is None

    before = len(await emitted(esc, ALERT))
    await update(esc, at=T0 + M, publicity="PA2")  # the province, informed, now acts (DOMAIN 5)
    assert (await told(esc, before, PROVINCE_CP))["cause"] == "must_act"

    before = len(await emitted(esc, ALERT))
    await update(esc, at=T0 + 2 * M, indicators=["immediate_danger"])  # P1
    raised = await told(esc, before, CP)
    assert (raised["cause"], raised["previous_severity"], raised["severity"]) == (
        "raised", "P2", "P1")

    before = len(await emitted(esc, ALERT))
    await transfer(esc, CP, CP8, T0 + 3 * M)
    moved = await told(esc, before, CP8)
    assert moved["cause"] == "transferred" and moved["from_authority_id"] == CP
    assert moved["from_authority_name"] == esc.rt.directory.get(CP).name

    await ack(esc, CP8, T0 + 4 * M)
    await close(esc, T0 + 60 * M)
    before = len(await emitted(esc, ALERT))
    await report(esc, at=T0 + 2 * 60 * M, new_case=False)
    assert (await told(esc, before, CP8))["cause"] == "reopened"

    await update(esc, at=T0 + 3 * 60 * M, severity_override="P5", override_reason_given=True)
    before = len(await emitted(esc, ALERT))
    await update(esc, at=T0 + 4 * 60 * M, indicators=["caregiver_is_abuser"])
    assert (await told(esc, before, CP8))["cause"] == "again"


async def test_an_emergency_reported_days_later_gets_its_12_hours_from_then(esc):
    """Counted from a first report that did not know of the danger, the 12 hours had passed
    when they were set: missed at once, with no window to act in and a breach on the commune's
    record (Decree 56 Art. 26.3: 12 hours of receiving the information)."""
    await report(esc, category="NEGLECT", indicators=[])  # P3: no emergency measure
    danger = T0 + 3 * 24 * 60 * M
    await update(esc, at=danger, indicators=["immediate_danger"])  # P1
    [m] = [m for m in await _rows(esc, EscalationMilestone) if m.milestone == "emergency_measure"]
    assert m.due_at == danger + 12 * 60 * M
    measure = sorted(t.due_at for t in await _rows(esc, MilestoneTimer,
                                                   milestone="emergency_measure"))
    assert measure[0] > danger and measure[-1] == m.due_at  # its reminders fall inside the window
    # The next decision counts it from there too: counted again from the first report, it
    # was pulled into the past and missed at once (found by the verification review).
    await update(esc, at=danger + 60 * M, publicity="PA1")
    [m] = [m for m in await _rows(esc, EscalationMilestone) if m.milestone == "emergency_measure"]
    assert m.due_at == danger + 12 * 60 * M
    await esc.fire_due(danger + 61 * M)
    assert await emitted(esc, "beacon.milestone.missed") == []
    await esc.fire_due(danger + 12 * 60 * M + M)
    assert [e["milestone"] for e in await emitted(esc, "beacon.milestone.missed")] == [
        "emergency_measure"]


async def test_an_emergency_in_a_linked_report_counts_from_its_receipt(esc):
    """A call taken at 09:00 and entered three hours later: its 12 hours run from the call, as
    the first report's do from its own."""
    await report(esc, category="NEGLECT", indicators=[])  # P3
    call = T0 + 2 * 24 * 60 * M
    linked = ReportReceived(
        case_id="C-1", report_id="R-late", new_case=False, received_at=call, channel="phone",
        category="NEGLECT", location=Location(province_code=1, commune_code=4), setting="home",
        child_ages=[10], indicators=["immediate_danger"], publicity="PA0")
    await esc.handle([wrap(linked, call + 3 * 60 * M)])
    [m] = [m for m in await _rows(esc, EscalationMilestone) if m.milestone == "emergency_measure"]
    assert m.due_at == call + 12 * 60 * M


async def test_an_authority_that_acknowledged_is_told_the_case_became_an_emergency(esc):
    """The commune had acknowledged a P3; a follow-up made it P1 and gave it the 12-hour
    emergency measure. It heard nothing until the reminder at half of it, 6 hours on, while
    the police and the province were alerted at once (found by a review of a hotline day)."""
    await report(esc, category="NEGLECT", indicators=[])  # P3: the commune acts
    await ack(esc, CP, T0 + 5 * M)
    danger = T0 + 60 * M
    before = len(await emitted(esc, ALERT))
    await update(esc, at=danger, indicators=["immediate_danger"])  # P1
    raised = await told(esc, before, CP)
    assert (raised["cause"], raised["previous_severity"], raised["severity"]) == (
        "raised", "P3", "P1")
    # What it must now do, and by when; not the acknowledgement it has given.
    assert raised["milestone"] == "emergency_measure"
    assert raised["milestone_due"] == (danger + 12 * 60 * M).isoformat().replace("+00:00", "Z")
    assert raised["ack_due"] is None


async def test_an_authority_that_acknowledged_holding_no_new_step_is_told_for_information(esc):
    await report(esc)  # P2: the commune acts
    await update(esc, at=T0 + M, publicity="PA2")  # the province acts too (DOMAIN 5)
    await ack(esc, PROVINCE_CP, T0 + 5 * M)
    before = len(await emitted(esc, ALERT))
    await update(esc, at=T0 + 10 * M, indicators=["immediate_danger"])  # P1
    raised = await told(esc, before, PROVINCE_CP)  # the commune holds the emergency measure
    assert (raised["cause"], raised["role"], raised["ack_due"], raised["milestone"]) == (
        "raised", "inform", None, None)


async def test_alerts_about_a_step_do_not_carry_an_acknowledgement_already_given(esc):
    """A reminder of the emergency measure, and the supervisor told it was missed, carried the
    commune's acknowledgement deadline, met hours before, beside the step's: a receiving system
    that reads `ack_due` showed the wrong deadline (found by a review of a hotline day)."""
    await report(esc, indicators=["immediate_danger"])  # P1: the emergency measure in 12 h
    await ack(esc, CP, T0 + 5 * M)
    before = len(await emitted(esc, ALERT))
    await esc.fire_due(T0 + 6 * 60 * M + M)  # the reminder at half of it
    await esc.fire_due(T0 + 13 * 60 * M)  # missed
    about_step = [a for a in (await emitted(esc, ALERT))[before:]
                  if a["milestone"] and a["kind"] in ("reminder", "supervisor")]
    assert {a["kind"] for a in about_step} == {"reminder", "supervisor"}
    assert all(a["ack_due"] is None and a["milestone_due"] for a in about_step)
    # The tier up, brought in by the miss, has a deadline of its own to acknowledge by.
    up = [a for a in (await emitted(esc, ALERT))[before:]
          if a["kind"] == "escalated" and a["role"] == "act"]
    assert up and all(a["ack_due"] for a in up)
