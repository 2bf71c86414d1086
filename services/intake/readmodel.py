"""The case read model: every case event, applied once, to the case row and its timeline."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.events import (
    AckRecorded, AlertRequested, CaseDecided, CaseReopened, CaseUpdated, DeliveryOutcome, Envelope,
    MilestoneMissed, MilestoneRecorded, MilestoneScheduled, ReportReceived, TargetAcknowledged,
    TYPE_OF, TargetEscalated, TargetReleased, TargetTransferred, TransferRequested,
)
from services.common.db import ProcessedEvent, add_bulk, claim_events, is_postgres, utcnow
from services.intake.store import (
    CaseAuthority, CaseCategory, CaseView, ParkedEvent, ReportRow, TimelineEntry,
)

log = structlog.get_logger("beacon.intake")

CONSUMER = "intake-readmodel"
UNPARK_INTERVAL_S = 5.0  # how late a parked event whose case has arrived may be applied
RECEIVED = TYPE_OF[ReportReceived]  # a report: its child fingerprints are in its row


async def unapplied(db, envelopes: list[Envelope]) -> list[Envelope]:
    """The envelopes not applied yet, found with one read (no write lock)."""
    async with db.reader() as reads:
        done = set((await reads.scalars(_APPLIED, {"ids": [e.id for e in envelopes]})).all())
    return [e for e in envelopes if e.id not in done]


_PROCESSED = ProcessedEvent.__table__
_APPLIED = select(_PROCESSED.c.event_id).where(
    _PROCESSED.c.consumer == CONSUMER, _PROCESSED.c.event_id.in_(bindparam("ids", expanding=True)))


async def applied(session: AsyncSession, event_ids: list[str]) -> set[str]:
    """Which of these events have been applied (in this transaction's view)."""
    if not event_ids:
        return set()
    return set((await session.scalars(_APPLIED, {"ids": event_ids})).all())


@dataclass(frozen=True)
class Children:
    """What intake keeps of a report's children for matching, in its own database (never on
    Kafka): their names' keyed hashes, and their sexes (None: not kept)."""

    fingerprints: Sequence[str] = ()
    sexes: Sequence[str] | None = None


async def apply(session: AsyncSession, envelope: Envelope, children: Children | None = None) -> bool:
    """Apply one event; False when it was applied before (redelivery, or intake applied it)."""
    return await apply_all(session, [(envelope, children)]) == 1


async def apply_all(session: AsyncSession, items: list[tuple[Envelope, Children | None]]) -> int:
    """Apply events in order, claimed with one statement; returns how many were new.
    `items` pairs each event with the Children of a report that intake has in hand; for the
    others they are read from the report rows, written before the event was published. Whoever
    applies a report first, request or consumer, has them."""
    fresh = await claim_events(session, CONSUMER, [envelope.id for envelope, _ in items])
    if is_postgres(session) and fresh:
        # The batch's cases locked up front, in one order: two instances read the topics'
        # partitions apart, so each held some of the other's cases and waited (deadlocks).
        await session.execute(_LOCK_CASES, {"ids": sorted(
            {e.subject for e, _ in items if e.id in fresh})})
    stored = await _stored_children(session, [
        envelope.data.get("report_id") for envelope, given in items
        if envelope.id in fresh and given is None and envelope.type == RECEIVED])
    applied, reported = 0, set()
    for envelope, children in items:
        if envelope.id in fresh:
            fresh.discard(envelope.id)  # a repeat later in the batch is applied once
            if envelope.type == RECEIVED:
                children = children or stored.get(envelope.data.get("report_id"), Children())
                reported.add(envelope.subject)
            await _apply(session, envelope, children or Children())
            applied += 1
    if reported:
        await _unpark(session, reported)
    return applied


async def _unpark(session: AsyncSession, case_ids: set[str]) -> None:
    """Apply the events that came before these cases' reports, in the order they came.
    One query for the whole batch: nearly always it finds nothing."""
    await _apply_parked(session, _PARKED, {"ids": list(case_ids)})


async def unpark_arrived(db) -> int:
    """Apply parked events whose case has arrived since. With two instances on PostgreSQL one
    may park an event while the other, not yet seeing that, opens the case and finds nothing
    parked: the event would wait for ever (its link then says "not valid"). Nearly always
    there is none: one indexed query. (SQLite's one writer at a time leaves no such gap.)"""
    async with db.writes() as session, session.begin():
        applied = await _apply_parked(session, _ARRIVED, {})
    if applied:
        log.warning("parked_events_applied_late", count=applied)
    return applied


async def _apply_parked(session: AsyncSession, query, params: dict) -> int:
    # Locked, skipping those another transaction holds: that one applies them, once.
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    rows = (await session.execute(query, params)).all()
    if rows:
        await session.execute(_UNPARK, {"ids": [r.id for r in rows]})
        for row in rows:
            await _apply(session, Envelope.model_validate_json(row.envelope), Children())
    return len(rows)


_P = ParkedEvent.__table__
_PARKED = (select(_P.c.id, _P.c.envelope).where(_P.c.case_id.in_(bindparam("ids", expanding=True)))
           .order_by(_P.c.id))
_ARRIVED = (select(_P.c.id, _P.c.envelope)
            .where(_P.c.case_id.in_(select(CaseView.__table__.c.case_id))).order_by(_P.c.id)
            .limit(500))
_UNPARK = _P.delete().where(_P.c.id.in_(bindparam("ids", expanding=True)))
_LOCK_CASES = (select(CaseView.__table__.c.case_id)
               .where(CaseView.__table__.c.case_id.in_(bindparam("ids", expanding=True)))
               .order_by(CaseView.__table__.c.case_id).with_for_update())


async def _stored_children(session: AsyncSession, report_ids: list[str]) -> dict[str, Children]:
    if not report_ids:
        return {}
    rows = await session.execute(_CHILDREN, {"ids": report_ids})
    return {report_id: Children(fingerprints or (), sexes)
            for report_id, fingerprints, sexes in rows}


_REPORTS = ReportRow.__table__
_CHILDREN = select(_REPORTS.c.report_id, _REPORTS.c.child_fingerprints,
                   _REPORTS.c.child_sexes).where(
    _REPORTS.c.report_id.in_(bindparam("ids", expanding=True)))


async def _apply(session: AsyncSession, envelope: Envelope, children: Children) -> None:
    data = envelope.payload()
    if isinstance(data, ReportReceived) and data.new_case:
        # A new case's id was made for it: there is no row to read, and it is one INSERT.
        _open(session, data, envelope.time, children)
        add_bulk(session, TimelineEntry, case_id=envelope.subject, at=envelope.time,
                 kind=_kind(envelope, data), detail=_received_detail(data), event_id=envelope.id)
        return
    # On PostgreSQL locked and read afresh: another intake instance applying an event to this
    # case waits, or its change would be lost. SQLite has one writer at a time.
    pg = is_postgres(session)
    case = await session.get(CaseView, envelope.subject, with_for_update=pg, populate_existing=pg)
    if case is None and not isinstance(data, ReportReceived):
        # Its report has not arrived: the topics are read together, in no order between them
        # (a lagging or restarted consumer, several instances). Kept until it comes.
        add_bulk(session, ParkedEvent, case_id=envelope.subject,
                 envelope=envelope.model_dump_json(), parked_at=utcnow())
        log.info("event_parked", case_id=envelope.subject, event_type=envelope.type)
        return
    detail: dict = {}
    match data:
        case ReportReceived():
            case = _received(session, case, data, envelope.time, children)
            await _add_category(session, case.case_id, data.category)
            detail = _received_detail(data)
        case CaseUpdated():
            detail = {"update_id": data.update_id, "by_role": data.by_role,
                      "indicators": data.indicators, "publicity": data.publicity,
                      "severity_override": data.severity_override}
        case TargetAcknowledged():
            detail = {"authority_id": data.authority_id, "by_user": data.by_user}
        case CaseDecided():
            await _decided(session, case, data)
            detail = {"severity": data.decision.severity, "publicity": data.decision.publicity,
                      "rulepack_version": data.decision.rulepack_version,
                      "added": [f"{t.role}:{t.authority_id}" for t in data.added],
                      "changed": [f"{t.role}:{t.authority_id}" for t in data.changed]}
        case AlertRequested():
            await _authority(session, case.case_id, data.authority_id)
            changes = {"alert": data.kind}
            if data.role == "act" and data.kind != "supervisor":  # a supervisor is told, not held
                # Escalation made it answer (the next tier up after a breach): so may it here.
                changes["role"] = "act"
                due = data.model_dump(mode="json", include={"ack_due"})["ack_due"]
                held = next((t.get("ack_due") for t in case.targets
                             if t["authority_id"] == data.authority_id), None)
                # A reopened case's window runs anew from the reopening: the old deadline,
                # long passed, showed the case as overdue the moment it reopened.
                if due and (not held or data.cause == "reopened"
                            or datetime.fromisoformat(due) < datetime.fromisoformat(held)):
                    changes["ack_due"] = due
            _target(case, data.authority_id, **changes)
            await _sync_duties(session, case, [data.authority_id])
            detail = {"alert_id": data.alert_id, "authority_id": data.authority_id,
                      "kind": data.kind, "role": data.role}
            if data.milestone:
                detail["milestone"] = data.milestone
        case TargetEscalated():
            detail = data.model_dump(mode="json", exclude={"case_id"})
            if _unsent_reminder(case, data):
                detail["outcome"] = "transferred"  # on the timeline, marked: no message went
            elif data.milestone is None:  # a step's reminders are on the timeline only: one
                _target(case, data.authority_id, escalation=data.step)  # hid a breach
            if data.step == "escalated" and data.to_authority_id:
                await _authority(session, case.case_id, data.to_authority_id)
                _same_window(case, data.authority_id, data.to_authority_id)
        case AckRecorded():
            _target(case, data.authority_id, acknowledged_at=data.at.isoformat(),
                    acknowledged_by=data.by_user)
            case.acknowledged = data.case_acknowledged
            await _sync_duties(session, case, [data.authority_id])
            detail = {"authority_id": data.authority_id, "by_user": data.by_user,
                      "case_acknowledged": data.case_acknowledged}
        case DeliveryOutcome():
            _target(case, data.authority_id, delivery=data.status, delivery_channel=data.channel)
            detail = data.model_dump(mode="json", exclude={"case_id"})
        case MilestoneRecorded():
            # Closed, unless escalation reopened it since (the cases topic may come first).
            if data.milestone == "case_closed" and not await _reopened_since(session, case, data.at):
                case.status = "closed"
            detail = data.model_dump(mode="json", exclude={"case_id"})
        case CaseReopened():
            case.status, case.acknowledged = "open", False
            for authority_id in data.authority_ids:  # asked to acknowledge again
                _target(case, authority_id, acknowledged_at=None, acknowledged_by=None)
            await _sync_duties(session, case, data.authority_ids)
            detail = data.model_dump(mode="json", exclude={"case_id"})
        case MilestoneScheduled() | MilestoneMissed() | TransferRequested():
            detail = data.model_dump(mode="json", exclude={"case_id"})
        case TargetTransferred():
            await _authority(session, case.case_id, data.to_authority_id)
            _target(case, data.from_authority_id, transferred_to=data.to_authority_id)
            # Handed back to an authority that had passed the case on: the duty is its again.
            # With a deadline, the new authority has yet to acknowledge (a returning one
            # answers again): the case waits for it.
            waits = {"ack_due": data.ack_due.isoformat(), "acknowledged_at": None,
                     "acknowledged_by": None} if data.ack_due else {}
            _target(case, data.to_authority_id, role="act", transferred_from=data.from_authority_id,
                    transferred_to=None, released=None, **waits)
            if data.ack_due:  # as escalation: held to the sender's window (1 h for P2...)
                _same_window(case, data.from_authority_id, data.to_authority_id, always=True)
            if data.ack_due:
                case.acknowledged = False
            await _sync_duties(session, case, [data.from_authority_id, data.to_authority_id])
            detail = data.model_dump(mode="json", exclude={"case_id"})
        case TargetReleased():
            _target(case, data.authority_id, released=True)
            await _sync_duties(session, case, [data.authority_id])
            detail = data.model_dump(mode="json", exclude={"case_id"})
    # When the case last changed, by its events' own time: a rebuild gives the same, so the
    # retention clock of a closed case does not start again (services/retention.py).
    case.updated_at = max(case.updated_at, envelope.time)
    add_bulk(session, TimelineEntry, case_id=envelope.subject, at=envelope.time,
             kind=_kind(envelope, data), detail=detail, event_id=envelope.id)


async def _reopened_since(session: AsyncSession, case: CaseView, at: datetime) -> bool:
    return await session.scalar(select(TimelineEntry.id).where(
        TimelineEntry.case_id == case.case_id, TimelineEntry.kind == "case_reopened",
        TimelineEntry.at > at).limit(1)) is not None


def _kind(envelope: Envelope, data) -> str:
    if isinstance(data, DeliveryOutcome):
        return f"delivery_{data.status}"
    return envelope.type.removeprefix("beacon.").replace(".", "_")


def _received_detail(data: ReportReceived) -> dict:
    # What a supervisor reads a case's calls by (codes only): a call that does not belong shows.
    return {"report_id": data.report_id, "category": data.category, "new_case": data.new_case,
            "independent": data.independent, "setting": data.setting,
            "indicators": data.indicators, "child_ages": data.child_ages}


def _open(session: AsyncSession, data: ReportReceived, at: datetime,
          children: Children = Children()) -> None:
    add_bulk(session, CaseView, **_new_case(data, at), report_count=1,
             independent_reports=int(data.independent),
             child_fingerprints=sorted(set(children.fingerprints)),
             child_ages=sorted(set(data.child_ages)), settings=[data.setting],
             child_sexes=None if children.sexes is None else sorted(set(children.sexes)))
    add_bulk(session, CaseCategory, case_id=data.case_id, category=data.category)


def _new_case(data: ReportReceived, at: datetime) -> dict:
    return dict(
        case_id=data.case_id, category=data.category, province_code=data.location.province_code,
        commune_code=data.location.commune_code, setting=data.setting, status="open",
        first_received_at=data.received_at, last_received_at=data.received_at, targets=[],
        acknowledged=False, updated_at=at)


def _received(session: AsyncSession, case: CaseView | None, data: ReportReceived, at: datetime,
              children: Children) -> CaseView:
    if case is None:  # a report linked to a case this model has not seen (a partial log)
        case = CaseView(**_new_case(data, at), report_count=0, independent_reports=0,
                        child_fingerprints=[], child_ages=None, settings=None, child_sexes=None)
        session.add(case)
    case.report_count += 1
    _add_fingerprints(case, children.fingerprints)
    if case.child_sexes is not None:  # None: not known, which any sex matches
        case.child_sexes = (None if children.sexes is None
                            else sorted({*case.child_sexes, *children.sexes}))
    # The ages of the first report that gave any: each call's within 2 years of the last one's
    # let 5, 7, 9, 11 and 13 join a case about a child of 5. None: a case from before ages were
    # kept, which any age matches.
    if case.child_ages is not None and not case.child_ages:
        case.child_ages = sorted(set(data.child_ages))
    if case.settings is not None and data.setting not in case.settings:
        case.settings = sorted({*case.settings, data.setting})
    case.independent_reports += int(data.independent)
    case.first_received_at = min(case.first_received_at, data.received_at)
    case.last_received_at = max(case.last_received_at, data.received_at)
    return case


async def _add_category(session: AsyncSession, case_id: str, category: str) -> None:
    # The case row is locked (PostgreSQL): no other instance adds this one meanwhile.
    if await session.scalar(_HAS_CATEGORY, {"case": case_id, "category": category}) is None:
        add_bulk(session, CaseCategory, case_id=case_id, category=category)


_C = CaseCategory.__table__
_HAS_CATEGORY = select(_C.c.case_id).where(_C.c.case_id == bindparam("case"),
                                           _C.c.category == bindparam("category"))


async def categories(session: AsyncSession, cases: Sequence[CaseView]) -> dict[str, list[str]]:
    """Each case's categories: the first report's, then the others its reports gave, by code."""
    rows = (await session.execute(select(_C.c.case_id, _C.c.category).where(
        _C.c.case_id.in_([c.case_id for c in cases])))).all() if cases else []
    found = {c.case_id: {c.category} for c in cases}
    for case_id, category in rows:
        found[case_id].add(category)
    return {c.case_id: [c.category, *sorted(found[c.case_id] - {c.category})] for c in cases}


def _add_fingerprints(case: CaseView, child_fingerprints) -> None:
    if child_fingerprints:
        case.child_fingerprints = sorted(set(case.child_fingerprints or ()) | set(child_fingerprints))


async def _decided(session: AsyncSession, case: CaseView, data: CaseDecided) -> None:
    decision = data.decision
    case.severity, case.publicity = decision.severity, decision.publicity
    case.rulepack_version = decision.rulepack_version
    targets = {t["authority_id"]: dict(t) for t in case.targets}  # copies: see _target
    for t in decision.targets:
        entry = targets.setdefault(t.authority_id, {"acknowledged_at": None, "delivery": None})
        # As in escalation: a duty is never dropped, nor its deadline put back, nor changed
        # once answered or passed on.
        held = entry.get("role") == "act" and (
            t.role != "act" or _sooner(entry, t) or entry.get("acknowledged_at")
            or entry.get("released"))
        before = {k: entry.get(k) for k in ("role", "ack_within", "working_days", "ack_due")}
        entry.update(t.model_dump(mode="json", exclude={"rules"}))
        if held:
            entry.update({k: v for k, v in before.items() if v is not None})
        await _authority(session, case.case_id, t.authority_id)
    for t in data.changed:  # escalation's word: a case alerting again holds them from then
        entry = targets.get(t.authority_id)
        if entry is not None and not entry.get("acknowledged_at") and not entry.get("released"):
            entry.update(t.model_dump(mode="json", include={"role", "ack_within", "working_days",
                                                            "ack_due"}))
    case.targets = list(targets.values())  # a new list: JSON columns track reassignment only
    await _sync_duties(session, case, [t.authority_id for t in (*decision.targets, *data.changed)])
    if any(t.role == "act" for t in decision.targets):
        # As escalation counts it: an authority that passed the case on answers no more.
        case.acknowledged = all(t.get("acknowledged_at") for t in case.targets
                                if t.get("role") == "act" and not t.get("released"))


def holds_duty(target: dict) -> bool:
    """An act target that still holds the case: not transferred on, not released. Only it sees
    the identity, acknowledges, records milestones and transfers; an informed one does none."""
    return (target.get("role") == "act" and not target.get("transferred_to")
            and not target.get("released"))


async def _sync_duties(session: AsyncSession, case: CaseView, authority_ids) -> None:
    """case_authorities follows the targets: whether each authority still owes its
    acknowledgement (`awaiting`), and its deadline while it does."""
    targets = {t["authority_id"]: t for t in case.targets}
    for authority_id in set(authority_ids):
        if (t := targets.get(authority_id)) is None:
            continue
        # Mostly in the session already: _authority has just read it.
        row = await session.get(CaseAuthority, (case.case_id, authority_id))
        if row is None:
            row = CaseAuthority(case_id=case.case_id, authority_id=authority_id)
            session.add(row)
        row.awaiting = holds_duty(t) and not t.get("acknowledged_at")
        row.ack_due = (datetime.fromisoformat(t["ack_due"])
                       if row.awaiting and t.get("ack_due") else None)


def _sooner(entry: dict, t) -> bool:
    """The target's deadline already on the case comes before the decision's."""
    return bool(entry.get("ack_due") and t.ack_due
                and datetime.fromisoformat(entry["ack_due"]) < t.ack_due)


async def _authority(session: AsyncSession, case_id: str, authority_id: str) -> None:
    if not await session.get(CaseAuthority, (case_id, authority_id)):
        session.add(CaseAuthority(case_id=case_id, authority_id=authority_id))
        await session.flush()  # so the next lookup in this transaction sees it


def _unsent_reminder(case: CaseView, data: TargetEscalated) -> bool:
    """A reminder of the acknowledgement to an authority whose transfer awaits the new one's
    acknowledgement: escalation sends it none (timer outcome `transferred`), as it can no
    longer acknowledge. Its milestones' reminders still go: it still holds those steps."""
    if data.step != "reminder" or data.milestone is not None:
        return False
    target = next((t for t in case.targets if t["authority_id"] == data.authority_id), {})
    return bool(target.get("transferred_to")) and not target.get("released")


def _same_window(case: CaseView, from_id: str, to_id: str, always: bool = False) -> None:
    """`to_id` is held to `from_id`'s acknowledgement window, as escalation holds it: the tier
    up made to act by a breach (one that had a window of its own keeps it), or the authority a
    transfer went to (`always`). Its deadline comes with its alert or the transfer."""
    held = {t["authority_id"]: t for t in case.targets}
    source, target = held.get(from_id), held.get(to_id)
    if source is None or not source.get("ack_within"):
        return
    if always or target is None or not target.get("ack_within"):
        _target(case, to_id, ack_within=source["ack_within"],
                working_days=source.get("working_days", False))


def _target(case: CaseView, authority_id: str, **changes) -> None:
    # Copies, then reassignment: a JSON column notices a new value, not an in-place change.
    targets = [dict(t) for t in case.targets]
    for t in targets:
        if t["authority_id"] == authority_id:
            t.update(changes)
            break
    else:  # joined by an alert or a transfer, not a decision: tier and agency from its id
        tier, _, agency = authority_id.split(":", 2)
        targets.append({"authority_id": authority_id, "tier": tier, "agency": agency,
                        "role": "inform", **changes})
    case.targets = targets


async def timeline(session: AsyncSession, case_id: str) -> list[TimelineEntry]:
    # By the events' own time and id, not the order they were applied in: a rebuild applies
    # topic by topic, and must show the same timeline as the live model.
    return list((await session.scalars(
        select(TimelineEntry).where(TimelineEntry.case_id == case_id)
        .order_by(TimelineEntry.at, TimelineEntry.event_id)
    )).all())
