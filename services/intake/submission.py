"""Accepting a human input: durable, published, then applied — or refused, and never half of each.

1. The input (identity sealed) is written as *pending* with its idempotency key: a report as
   its row, a severity override as its row (the reason sealed), another follow-up with an
   Idempotency-Key as its event on the key.
2. Its event is published and the broker acknowledges it (acks=all), or we give up after 5 s
   and the caller gets 503 with Retry-After. The input is then *withdrawn*, not deleted: a broker
   may have taken the event and lost only its acknowledgement. If the event turns up on Kafka
   after all, intake's own consumer adopts the input (accepted, as the event says); if it never
   does, the retention purge removes it (`withdrawn`, 30 days). A retry with the same
   Idempotency-Key publishes it again under the same ids. The start-up sweep leaves it alone.
3. The input is marked published and the event applied to the read model.
A crash after 1 leaves a pending input whose event may be on Kafka: a retry with the same
Idempotency-Key, or the start-up sweep, publishes it again under the same event id, which every
consumer drops as a repeat.
"""

import asyncio
import hashlib
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from fastapi import HTTPException
from sqlalchemy import bindparam, delete, exists, select
from sqlalchemy.exc import IntegrityError

from schemas.events import Envelope, Topics
from services.common import audit, kafka, metrics
from services.common.auth import Principal, User
from services.common.db import ProcessedEvent, add_bulk, utcnow
from services.common.group_commit import GroupCommit
from services.intake import readmodel
from services.intake.store import IdempotencyKey, ReportRow, SeverityOverrideRow, WithdrawnInput

log = structlog.get_logger("beacon.intake")
SOURCE = "beacon/intake"  # every input's envelope
PUBLISH_TIMEOUT_S = 5
RETRY_AFTER_S = "5"


# When the request must have its answer, 503 at the latest (loop time): a wait for the
# duplicate match and the broker's acknowledgement share one PUBLISH_TIMEOUT_S. While the
# broker was down, reports about one commune and category queued behind each other's 5 s.
_ANSWER_BY: ContextVar[float | None] = ContextVar("answer_by", default=None)


def start_clock() -> None:
    """The request's PUBLISH_TIMEOUT_S starts now (its own task's context)."""
    _ANSWER_BY.set(asyncio.get_running_loop().time() + PUBLISH_TIMEOUT_S)


def time_left() -> float:
    answer_by = _ANSWER_BY.get()
    if answer_by is None:
        return PUBLISH_TIMEOUT_S
    return max(0.0, answer_by - asyncio.get_running_loop().time())


def unavailable(why: str = "the event log is unavailable; try again") -> HTTPException:
    """The 503 of an input not taken now, with when to try again."""
    return HTTPException(503, why, headers={"Retry-After": RETRY_AFTER_S})


@dataclass
class Idempotency:
    key: str
    body_hash: str


def body_hash(canonical_json: str) -> str:
    return hashlib.sha256(canonical_json.encode()).hexdigest()


async def replay(rt, who: Principal, idem: Idempotency | None) -> dict | None:
    """The earlier answer for this key, 409 for another body or for a first attempt still
    under way, None for a new key."""
    if idem is None:
        return None
    async with rt.db.reader() as reads:
        key = (await reads.execute(_KEY, {"user_id": who.user_id, "key": idem.key})).one_or_none()
        if key is None:
            return None
        if key.body_hash != idem.body_hash:
            raise HTTPException(409, "Idempotency-Key was used before with a different body")
        # Not published yet: a follow-up's event is on its key, a report's or an override's on
        # its row.
        pending = key if key.event is not None else await _pending_row(reads, key.response)
    if pending is not None:
        if pending.created_at > utcnow() - IN_PROGRESS:
            raise HTTPException(409, "Idempotency-Key is in use by a request in progress",
                                headers={"Retry-After": RETRY_AFTER_S})
        # The first attempt died half-way, or was refused: finish it now. If the broker does not
        # take it, this caller gets 503 and the input is withdrawn, as any refused one is.
        try:
            await finish(rt, pending.event, who.user_id, idem.key)
        except HTTPException:
            envelope = Envelope.model_validate_json(pending.event)
            if await _withdraw(rt, who, envelope, idem):
                raise
    return key.response


# A pending input younger than this may still be published by the request that wrote it.
IN_PROGRESS = timedelta(seconds=PUBLISH_TIMEOUT_S + 1)

# Built once, like _PUBLISHED: every submission runs them (docs/performance.md).
_KEY = select(IdempotencyKey.body_hash, IdempotencyKey.response, IdempotencyKey.event,
              IdempotencyKey.created_at).where(
    IdempotencyKey.user_id == bindparam("user_id"), IdempotencyKey.key == bindparam("key"))
# The answer's id field, and the unpublished row it names.
_PENDING = (
    ("report_id", select(ReportRow.event, ReportRow.created_at).where(
        ReportRow.report_id == bindparam("id"), ReportRow.published.is_(False))),
    ("update_id", select(SeverityOverrideRow.event, SeverityOverrideRow.created_at).where(
        SeverityOverrideRow.update_id == bindparam("id"), SeverityOverrideRow.published.is_(False))),
)


async def _pending_row(reads, response: dict):
    for field, statement in _PENDING:
        if field in response:
            return (await reads.execute(statement, {"id": response[field]})).one_or_none()
    return None


async def _publish(rt, envelope: Envelope) -> None:
    """Publish and wait for the broker's acknowledgement; 503 once the request's time is up."""
    try:
        await asyncio.wait_for(
            kafka.publish_input(rt.producer, rt.settings.topic(Topics.INPUTS), envelope),
            time_left(),
        )
    except Exception as exc:
        metrics.PUBLISH_FAILURES.inc()
        log.warning("publish_failed", case_id=envelope.subject, error=type(exc).__name__)
        raise unavailable() from None


async def accept(rt, who: Principal, envelope: Envelope, row: dict | None,
                 response: dict, idem: Idempotency | None,
                 children: readmodel.Children | None = None, table: type | None = None) -> dict:
    """`row`: the values of the input's own row in `table` (a report's ReportRow, an override's
    SeverityOverrideRow), which holds its event until it is published; both None for other
    inputs, whose event waits on their idempotency key."""
    key = None if idem is None else dict(
        user_id=who.user_id, key=idem.key, response=response, body_hash=idem.body_hash,
        event=None if row is not None else envelope.model_dump_json(), created_at=utcnow())
    try:
        await rt.inputs(Pending(row, key, table))
    except IntegrityError:
        # The key is the row's primary key: it was used before, or is in use. Looked up only
        # now, when it clashed: a new key (nearly every request) costs no read.
        try:
            earlier = await replay(rt, who, idem)
        except HTTPException as exc:
            if exc.status_code == 409:  # another body, or the first attempt still under way
                await _record(rt, who, envelope, "rejected")
            raise
        if earlier is not None:
            await _record(rt, who, envelope, "replayed", earlier.get("case_id"))
            return earlier
        raise
    try:
        await _publish(rt, envelope)
    except HTTPException:
        if await _withdraw(rt, who, envelope, idem):
            raise
    await rt.inputs(Published(who, envelope, table, children,
                              None if idem is None else idem.key))
    if "new_case" in response:  # a report
        metrics.REPORTS.labels("true" if response["new_case"] else "false").inc()
    return response


async def _record(rt, who: Principal, envelope: Envelope, outcome: str,
                  case_id: str | None = None) -> None:
    """Every attempt is recorded, answered from the key or refused."""
    await audit.write(rt.db, who.user_id, who.role, "write", case_id or envelope.subject,
                      sorted(envelope.data), outcome=outcome)


async def _withdraw(rt, who: Principal, envelope: Envelope, idem: Idempotency | None) -> bool:
    """After a failed publish: withdraw the input (True), or find that its event is on Kafka
    after all, applied by intake's consumer (False: it is accepted). An input with nothing
    stored (a follow-up without a key, say) is withdrawn too: if its event lands all the same,
    its adoption is the record of who wrote it."""
    async with rt.db.writes() as session, session.begin():
        if earlier := await session.get(WithdrawnInput, envelope.id):
            earlier.withdrawn_at = utcnow()  # a keyed retry refused again: still withdrawn
        else:
            add_bulk(session, WithdrawnInput, event_id=envelope.id, case_id=envelope.subject,
                     user_id=who.user_id, role=who.role, key=idem.key if idem else None,
                     withdrawn_at=utcnow())
        # The attempt is on record whatever becomes of it (adopted later, or purged).
        audit.record(session, who.user_id, who.role, "write", envelope.subject,
                     sorted(envelope.data), outcome="withdrawn")
    # Checked after the withdrawal is committed, as the consumer checks for withdrawals after
    # its application is: whichever comes second sees the other (on PostgreSQL too).
    async with rt.db.writes() as session, session.begin():
        if await readmodel.applied(session, [envelope.id]):
            await adopt(session, [envelope.id])
            return False
    log.warning("input_withdrawn", case_id=envelope.subject, event_id=envelope.id)
    return True


async def adopt(session, event_ids: Sequence[str]) -> int:
    """Inputs withdrawn after a failed publish whose events are on Kafka after all (these ids):
    marked published like any accepted input, and recorded. How many there were."""
    if not event_ids:
        return 0
    # Deleted first, returning what was there: of two adopters at once, one does the rest.
    rows = (await session.execute(_ADOPT, {"ids": list(event_ids)})).all()
    if rows:
        marks = [{"published_event": r.event_id} for r in rows]
        for statement in _PUBLISHED.values():
            await session.execute(statement, marks)
        if keys := [{"key_user": r.user_id, "key_name": r.key} for r in rows if r.key]:
            await session.execute(_KEY_PUBLISHED, keys)
        for r in rows:
            audit.record(session, r.user_id, r.role, "write", r.case_id, outcome="adopted")
            log.warning("withdrawn_input_adopted", case_id=r.case_id, event_id=r.event_id)
    return len(rows)


async def purge_withdrawn(session, before: datetime) -> int:
    """The retention purge: every withdrawn input whose event has been applied is adopted,
    whatever its age (a backstop for the consumer's own adoption); then those withdrawn before
    `before`, at most BATCH, are removed with their rows and keys. How many were settled."""
    adopted = await adopt(session, (await session.scalars(_APPLIED_WITHDRAWN)).all())
    rows = (await session.execute(_WITHDRAWN_BEFORE, {"before": before, "batch": BATCH})).all()
    if rows:
        dropped = {"ids": [r.event_id for r in rows]}
        for table in _PUBLISHED:
            await session.execute(delete(table).where(table.event_id.in_(_IDS)), dropped)
        for r in rows:
            if r.key:
                await session.execute(delete(IdempotencyKey).where(
                    IdempotencyKey.user_id == r.user_id, IdempotencyKey.key == r.key))
        await session.execute(_UNWITHDRAW, dropped)
    return adopted + len(rows)


BATCH = 500
_W, _IDS = WithdrawnInput.__table__, bindparam("ids", expanding=True)
_ADOPT = _W.delete().where(_W.c.event_id.in_(_IDS)).returning(
    _W.c.event_id, _W.c.case_id, _W.c.user_id, _W.c.role, _W.c.key)
_WITHDRAWN_BEFORE = (select(_W.c.event_id, _W.c.user_id, _W.c.key)
                     .where(_W.c.withdrawn_at < bindparam("before"))
                     .order_by(_W.c.withdrawn_at).limit(bindparam("batch")))
_UNWITHDRAW = _W.delete().where(_W.c.event_id.in_(_IDS))
_P = ProcessedEvent.__table__
_APPLIED_WITHDRAWN = select(_W.c.event_id).join(
    _P, (_P.c.event_id == _W.c.event_id) & (_P.c.consumer == readmodel.CONSUMER))


@dataclass
class Pending:
    """An input before its publish: its own row in `table` (None for other follow-ups) and its
    idempotency key."""

    row: dict | None
    key: dict | None
    table: type | None = None  # ReportRow or SeverityOverrideRow


@dataclass
class Published:
    """An input on Kafka, to be marked published, applied to the read model and audited."""

    who: Principal
    envelope: Envelope
    table: type | None  # the table of its own row to mark; None: its key holds its event
    children: readmodel.Children | None  # a report's, in hand; None: read from its row
    key: str | None = None  # its Idempotency-Key


def writer(db) -> GroupCommit:
    """Concurrent requests' pending and published inputs, written by one transaction with
    set-based statements: a transaction's fixed cost, and each input's own statements, were most
    of a report's cost (docs/performance.md)."""
    return GroupCommit(db.writes, write=_write)


async def _write(session, items: list[Pending | Published]) -> list[None]:
    for item in items:
        if isinstance(item, Pending):
            if item.row is not None:
                add_bulk(session, item.table, **item.row)
            if item.key is not None:
                add_bulk(session, IdempotencyKey, **item.key)
    published = [item for item in items if isinstance(item, Published)]
    for table, statement in _PUBLISHED.items():
        if marks := [{"published_event": p.envelope.id} for p in published if p.table is table]:
            await session.execute(statement, marks)
    if keys := [{"key_user": p.who.user_id, "key_name": p.key}
                for p in published if p.key is not None and p.table is None]:
        await session.execute(_KEY_PUBLISHED, keys)
    await readmodel.apply_all(session, [(p.envelope, p.children) for p in published])
    for p in published:
        audit.record(session, p.who.user_id, p.who.role, "write", p.envelope.subject,
                     sorted(p.envelope.data))
    return [None] * len(items)


_KEYS = IdempotencyKey.__table__
_PUBLISHED = {model: (model.__table__.update()
                      .where(model.__table__.c.event_id == bindparam("published_event"))
                      .values(published=True))
              for model in (ReportRow, SeverityOverrideRow)}
_KEY_PUBLISHED = (_KEYS.update().where(_KEYS.c.user_id == bindparam("key_user"),
                                       _KEYS.c.key == bindparam("key_name")).values(event=None))


async def finish(rt, event: str, user_id: str, key: str | None = None) -> None:
    """Publish a pending input of `user_id`'s again (same event id: consumers drop a repeat),
    mark it published (its own row, and its idempotency key) and apply it; it is recorded as
    that user's write, which the request that died never did. 503 if the broker does not take
    it: the input stays pending for a later retry or the sweep."""
    envelope = Envelope.model_validate_json(event)
    await _publish(rt, envelope)
    async with rt.db.writes() as session, session.begin():
        for statement in _PUBLISHED.values():  # by event id: its row is in one of them, if any
            await session.execute(statement, {"published_event": envelope.id})
        await session.execute(_UNWITHDRAW, {"ids": [envelope.id]})  # a withdrawn one is accepted
        if key is not None:
            await session.execute(_KEY_PUBLISHED, {"key_user": user_id, "key_name": key})
        await readmodel.apply(session, envelope)  # a report's fingerprints: from its row
        user = await session.get(User, user_id)
        audit.record(session, user_id, user.role if user else "unknown", "write",
                     envelope.subject, sorted(envelope.data))


SWEEP_INTERVAL_S = 30.0


async def sweep(rt, older_than: timedelta = timedelta(seconds=30)) -> int:
    """At start-up and every SWEEP_INTERVAL_S: finish inputs left pending by a request that died
    (a crash, an error after the publish). Erring towards acting on a real report. An input
    refused with 503 (withdrawn) is not finished: its caller was told it was not."""
    cutoff = utcnow() - older_than
    async with rt.db.reads() as session:
        rows = []  # reports and overrides, reports first; not those refused with 503
        for table, author in ((ReportRow, ReportRow.submitted_by),
                              (SeverityOverrideRow, SeverityOverrideRow.by_user)):
            rows += (await session.execute(select(table.event, author).where(
                table.published.is_(False), table.created_at < cutoff,
                table.event_id.not_in(select(_W.c.event_id))))).all()
        updates = (await session.execute(
            select(IdempotencyKey.event, IdempotencyKey.user_id, IdempotencyKey.key).where(
                IdempotencyKey.event.is_not(None), IdempotencyKey.created_at < cutoff,
                ~exists().where(_W.c.user_id == IdempotencyKey.user_id,
                                _W.c.key == IdempotencyKey.key)))).all()
    for event, user_id in rows:
        await finish(rt, event, user_id)
    for event, user_id, key in updates:
        await finish(rt, event, user_id, key)
    if count := len(rows) + len(updates):
        log.info("pending_inputs_finished", count=count)
    return count
