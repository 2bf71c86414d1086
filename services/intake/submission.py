"""Accepting a human input: durable, published, then applied — or refused with nothing left behind.

1. The input (identity sealed) is written as *pending* with its idempotency key.
2. Its event is published and the broker acknowledges it (acks=all), or we give up after 5 s:
   the pending rows are deleted and the caller gets 503 with Retry-After.
3. The input is marked published and the event applied to the read model.
A crash between 2 and 3 leaves a pending row whose event may be on Kafka: a retry with the same
Idempotency-Key, or the start-up sweep, publishes it again under the same event id, which every
consumer drops as a repeat.
"""

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from fastapi import HTTPException
from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from schemas.events import Envelope, Topics
from services.common import audit, kafka
from services.common.auth import Principal
from services.common.db import add_bulk, utcnow
from services.common.group_commit import GroupCommit
from services.intake import readmodel
from services.intake.store import IdempotencyKey, ReportRow

log = structlog.get_logger("beacon.intake")
PUBLISH_TIMEOUT_S = 5
RETRY_AFTER_S = "5"


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
        row = (await reads.execute(_KEY, {"user_id": who.user_id, "key": idem.key})).one_or_none()
        if row is None:
            return None
        if row.body_hash != idem.body_hash:
            raise HTTPException(409, "Idempotency-Key was used before with a different body")
        pending = (await reads.execute(
            _PENDING, {"report": row.response.get("report_id")})).one_or_none()
    if pending is not None:
        if pending.created_at > utcnow() - IN_PROGRESS:
            raise HTTPException(409, "Idempotency-Key is in use by a request in progress",
                                headers={"Retry-After": RETRY_AFTER_S})
        await finish(rt, pending.event_id)  # the first attempt died half-way: finish it now
    return row.response


# A pending input younger than this may still be published by the request that wrote it.
IN_PROGRESS = timedelta(seconds=PUBLISH_TIMEOUT_S + 1)

# Built once, like _PUBLISHED: every submission runs them (docs/performance.md).
_KEY = select(IdempotencyKey.body_hash, IdempotencyKey.response).where(
    IdempotencyKey.user_id == bindparam("user_id"), IdempotencyKey.key == bindparam("key"))
_PENDING = select(ReportRow.event_id, ReportRow.created_at).where(
    ReportRow.report_id == bindparam("report"), ReportRow.published.is_(False))


async def accept(rt, who: Principal, envelope: Envelope, row: dict | None,
                 response: dict, idem: Idempotency | None, child_fingerprints=()) -> dict:
    """`row`: the values of the input's ReportRow (a report), or None (other inputs)."""
    key = None if idem is None else dict(user_id=who.user_id, key=idem.key, response=response,
                                         body_hash=idem.body_hash, created_at=utcnow())
    try:
        await rt.inputs(Pending(row, key))
    except IntegrityError:
        # The key is the row's primary key: it was used before, or is in use. Looked up only
        # now, when it clashed: a new key (nearly every request) costs no read.
        if (earlier := await replay(rt, who, idem)) is not None:
            return earlier
        raise
    try:
        await asyncio.wait_for(
            kafka.publish_input(rt.producer, rt.settings.topic(Topics.INPUTS), envelope),
            PUBLISH_TIMEOUT_S,
        )
    except Exception as exc:
        log.warning("publish_failed", error=type(exc).__name__)
        async with rt.db.writes() as session, session.begin():
            if row is not None:
                await session.execute(delete(ReportRow).where(ReportRow.event_id == envelope.id))
            if idem is not None:
                await session.execute(delete(IdempotencyKey).where(
                    IdempotencyKey.user_id == who.user_id, IdempotencyKey.key == idem.key))
        raise HTTPException(503, "the event log is unavailable; nothing was recorded, try again",
                            headers={"Retry-After": RETRY_AFTER_S}) from None
    await rt.inputs(Published(who, envelope, row is not None, child_fingerprints))
    return response


@dataclass
class Pending:
    """An input before its publish: its report row (None for a follow-up) and idempotency key."""

    report: dict | None
    key: dict | None


@dataclass
class Published:
    """An input on Kafka, to be marked published, applied to the read model and audited."""

    who: Principal
    envelope: Envelope
    report: bool  # a report (a ReportRow to mark), not a follow-up
    child_fingerprints: Sequence[str]


def writer(db) -> GroupCommit:
    """Concurrent requests' pending and published inputs, written by one transaction with
    set-based statements: a transaction's fixed cost, and each input's own statements, were most
    of a report's cost (docs/performance.md)."""
    return GroupCommit(db.writes, write=_write)


async def _write(session, items: list[Pending | Published]) -> list[None]:
    for item in items:
        if isinstance(item, Pending):
            if item.report is not None:
                add_bulk(session, ReportRow, **item.report)
            if item.key is not None:
                add_bulk(session, IdempotencyKey, **item.key)
    published = [item for item in items if isinstance(item, Published)]
    if marks := [{"published_event": p.envelope.id} for p in published if p.report]:
        await session.execute(_PUBLISHED, marks)
    await readmodel.apply_all(session, [(p.envelope, p.child_fingerprints) for p in published])
    for p in published:
        audit.record(session, p.who.user_id, p.who.role, "write", p.envelope.subject,
                     sorted(p.envelope.data))
    return [None] * len(items)


_REPORTS = ReportRow.__table__
_PUBLISHED = (_REPORTS.update()
              .where(_REPORTS.c.event_id == bindparam("published_event")).values(published=True))


async def finish(rt, event_id: str) -> None:
    """Publish a pending input again (same event id) and apply it."""
    async with rt.db.reads() as session:
        row = await session.scalar(select(ReportRow).where(ReportRow.event_id == event_id))
    if row is None or row.published:
        return
    envelope = Envelope.model_validate_json(row.event)
    await kafka.publish_input(rt.producer, rt.settings.topic(Topics.INPUTS), envelope)
    async with rt.db.writes() as session, session.begin():
        await session.execute(_PUBLISHED, {"published_event": event_id})
        await readmodel.apply(session, envelope, row.child_fingerprints)


async def sweep(rt, older_than: timedelta = timedelta(seconds=30)) -> int:
    """At start-up: finish inputs a crash left pending. Erring towards acting on a real report."""
    async with rt.db.reads() as session:
        ids = (await session.scalars(select(ReportRow.event_id).where(
            ReportRow.published.is_(False), ReportRow.created_at < utcnow() - older_than))).all()
    for event_id in ids:
        await finish(rt, event_id)
    if ids:
        log.info("pending_inputs_finished", count=len(ids))
    return len(ids)
