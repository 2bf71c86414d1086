"""Accepting a human input: durable, published, then applied — or refused with nothing left behind.

1. The input (identity sealed) is written as *pending* with its idempotency key: a report as
   its row, a follow-up with an Idempotency-Key as its event on the key.
2. Its event is published and the broker acknowledges it (acks=all), or we give up after 5 s:
   the pending rows are deleted and the caller gets 503 with Retry-After.
3. The input is marked published and the event applied to the read model.
A crash after 1 leaves a pending input whose event may be on Kafka: a retry with the same
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
        key = (await reads.execute(_KEY, {"user_id": who.user_id, "key": idem.key})).one_or_none()
        if key is None:
            return None
        if key.body_hash != idem.body_hash:
            raise HTTPException(409, "Idempotency-Key was used before with a different body")
        # Not published yet: a follow-up's event is on its key, a report's on its row.
        pending = key if key.event is not None else (await reads.execute(
            _PENDING, {"report": key.response.get("report_id")})).one_or_none()
    if pending is not None:
        if pending.created_at > utcnow() - IN_PROGRESS:
            raise HTTPException(409, "Idempotency-Key is in use by a request in progress",
                                headers={"Retry-After": RETRY_AFTER_S})
        # The first attempt died half-way: finish it now (503 and still pending if we can't).
        await finish(rt, pending.event, (who.user_id, idem.key))
    return key.response


# A pending input younger than this may still be published by the request that wrote it.
IN_PROGRESS = timedelta(seconds=PUBLISH_TIMEOUT_S + 1)

# Built once, like _PUBLISHED: every submission runs them (docs/performance.md).
_KEY = select(IdempotencyKey.body_hash, IdempotencyKey.response, IdempotencyKey.event,
              IdempotencyKey.created_at).where(
    IdempotencyKey.user_id == bindparam("user_id"), IdempotencyKey.key == bindparam("key"))
_PENDING = select(ReportRow.event, ReportRow.created_at).where(
    ReportRow.report_id == bindparam("report"), ReportRow.published.is_(False))


async def _publish(rt, envelope: Envelope) -> None:
    """Publish and wait for the broker's acknowledgement; 503 after PUBLISH_TIMEOUT_S."""
    try:
        await asyncio.wait_for(
            kafka.publish_input(rt.producer, rt.settings.topic(Topics.INPUTS), envelope),
            PUBLISH_TIMEOUT_S,
        )
    except Exception as exc:
        log.warning("publish_failed", error=type(exc).__name__)
        raise HTTPException(503, "the event log is unavailable; try again",
                            headers={"Retry-After": RETRY_AFTER_S}) from None


async def accept(rt, who: Principal, envelope: Envelope, row: dict | None,
                 response: dict, idem: Idempotency | None, child_fingerprints=()) -> dict:
    """`row`: the values of the input's ReportRow (a report), or None (other inputs)."""
    key = None if idem is None else dict(
        user_id=who.user_id, key=idem.key, response=response, body_hash=idem.body_hash,
        event=None if row is not None else envelope.model_dump_json(), created_at=utcnow())
    try:
        await rt.inputs(Pending(row, key))
    except IntegrityError:
        # The key is the row's primary key: it was used before, or is in use. Looked up only
        # now, when it clashed: a new key (nearly every request) costs no read.
        if (earlier := await replay(rt, who, idem)) is not None:
            return earlier
        raise
    try:
        await _publish(rt, envelope)
    except HTTPException:
        async with rt.db.writes() as session, session.begin():  # nothing left behind
            if row is not None:
                await session.execute(delete(ReportRow).where(ReportRow.event_id == envelope.id))
            if idem is not None:
                await session.execute(delete(IdempotencyKey).where(
                    IdempotencyKey.user_id == who.user_id, IdempotencyKey.key == idem.key))
        raise
    await rt.inputs(Published(who, envelope, row is not None, child_fingerprints,
                              None if idem is None else idem.key))
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
    key: str | None = None  # its Idempotency-Key: a follow-up's holds the event until now


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
    if keys := [{"key_user": p.who.user_id, "key_name": p.key}
                for p in published if p.key is not None and not p.report]:
        await session.execute(_KEY_PUBLISHED, keys)
    await readmodel.apply_all(session, [(p.envelope, p.child_fingerprints) for p in published])
    for p in published:
        audit.record(session, p.who.user_id, p.who.role, "write", p.envelope.subject,
                     sorted(p.envelope.data))
    return [None] * len(items)


_REPORTS, _KEYS = ReportRow.__table__, IdempotencyKey.__table__
_PUBLISHED = (_REPORTS.update()
              .where(_REPORTS.c.event_id == bindparam("published_event")).values(published=True))
_KEY_PUBLISHED = (_KEYS.update().where(_KEYS.c.user_id == bindparam("key_user"),
                                       _KEYS.c.key == bindparam("key_name")).values(event=None))


async def finish(rt, event: str, key: tuple[str, str] | None = None) -> None:
    """Publish a pending input again (same event id: consumers drop a repeat), mark it published
    (its report row, and its idempotency key: (user id, key)) and apply it. 503 if the broker does
    not take it: the input stays pending for a later retry or the sweep."""
    envelope = Envelope.model_validate_json(event)
    await _publish(rt, envelope)
    async with rt.db.writes() as session, session.begin():
        await session.execute(_PUBLISHED, {"published_event": envelope.id})
        if key is not None:
            await session.execute(_KEY_PUBLISHED, {"key_user": key[0], "key_name": key[1]})
        await readmodel.apply(session, envelope)  # a report's fingerprints: from its row


async def sweep(rt, older_than: timedelta = timedelta(seconds=30)) -> int:
    """At start-up: finish inputs a crash left pending. Erring towards acting on a real report."""
    cutoff = utcnow() - older_than
    async with rt.db.reads() as session:
        reports = (await session.scalars(select(ReportRow.event).where(
            ReportRow.published.is_(False), ReportRow.created_at < cutoff))).all()
        updates = (await session.execute(
            select(IdempotencyKey.event, IdempotencyKey.user_id, IdempotencyKey.key).where(
                IdempotencyKey.event.is_not(None), IdempotencyKey.created_at < cutoff))).all()
    for event in reports:
        await finish(rt, event)
    for event, user_id, key in updates:
        await finish(rt, event, (user_id, key))
    if count := len(reports) + len(updates):
        log.info("pending_inputs_finished", count=count)
    return count
