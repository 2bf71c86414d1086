"""Retention per record class (DOMAIN.md section 7, point 4): how long each class is kept, and
the purge that enforces it. Each service purges its own classes at start and then every
BEACON_RETENTION_INTERVAL_S; `beacon retention run` purges now (`--dry-run` only counts).

- identity: a report's sealed identity, its keyed hashes and its children's sexes, and a
  severity override's sealed reason, once its case is closed, or was decided and routed to
  nobody (a call for information only, which nobody closes), and unchanged for
  BEACON_RETENTION_IDENTITY_DAYS (default 0: kept). Each case is audited.
- idempotency: `Idempotency-Key` answers made BEACON_RETENTION_IDEMPOTENCY_DAYS ago (30).
- withdrawn: inputs refused with 503 BEACON_RETENTION_WITHDRAWN_DAYS ago (30), with their sealed
  identity: adopted if their event reached Kafka after all, else removed
  (services/intake/submission.py).
- deliveries: the notifier's delivered and dead-lettered rows last changed
  BEACON_RETENTION_DELIVERIES_DAYS ago (90). Keep them longer than the alerts topic keeps its
  records: a row is how a redelivered alert is known as sent.

Kept on purpose (docs/privacy.md): the audit log (append-only evidence), the case record and
timeline (codes only), and the inbox of applied events, which must outlive every record that can
still be replayed. A class with 0 days is kept for ever.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, bindparam, exists, func, literal_column, or_, select, tuple_, union_all

from services.common import audit
from services.common.db import Database, utcnow
from services.intake import submission
from services.intake.store import (
    CaseAuthority, CaseView, IdempotencyKey, ReportRow, SeverityOverrideRow, WithdrawnInput,
)
from services.notifier.store import Delivery

log = structlog.get_logger("beacon.retention")
BATCH = 500  # rows per transaction: a first purge of years of rows never holds the writers long
WHO = ("system:retention", "system")  # the audit record's user and role
ERASED = ["child_fingerprints", "child_sexes", "identity", "reporter_fingerprint"]  # a report's
OVERRIDE_ERASED = ["override.reason"]

_REPORTS, _CASES, _OVERRIDES = ReportRow.__table__, CaseView.__table__, SeverityOverrideRow.__table__
_ROUTED = CaseAuthority.__table__
_KEYS, _DELIVERIES = IdempotencyKey.__table__, Delivery.__table__
_BEFORE, _IDS = bindparam("before"), bindparam("ids", expanding=True)


@dataclass(frozen=True)
class RecordClass:
    name: str
    service: str  # the service whose tables these are: it purges them
    setting: str  # the Settings field that holds the days
    due: object  # the rows due for purging (a select; the purge takes BATCH of them at a time)
    purge: Callable[..., Awaitable[int]]  # (session, before) -> rows purged, at most BATCH


def _sealed(table, id_column, sealed_column, kind: str):
    """The rows of `table` that still hold something sealed, of cases unchanged since that are
    closed or were decided and routed to nobody. Only an authority that must act closes a case:
    the identity of a call for information only (P5), which nobody closes, was kept for ever.
    Decided: before its decision every case is routed to nobody (a decision dead-lettered, a
    rebuild between its topics), and one that authorities work on must keep its identity."""
    routed = exists().where(_ROUTED.c.case_id == _CASES.c.case_id)
    unrouted = and_(_CASES.c.severity.is_not(None), ~routed)
    return (select(id_column.label("id"), table.c.case_id, literal_column(f"'{kind}'").label("kind"))
            .join(_CASES, _CASES.c.case_id == table.c.case_id)
            .where(or_(_CASES.c.status == "closed", unrouted), _CASES.c.updated_at < _BEFORE,
                   sealed_column.is_not(None)))


_SEALED = union_all(
    _sealed(_REPORTS, _REPORTS.c.report_id, _REPORTS.c.identity, "report"),
    _sealed(_OVERRIDES, _OVERRIDES.c.update_id, _OVERRIDES.c.reason, "override"))


# The case rows first, in case id order, then the reports and overrides: the order in which the
# read model (services/intake/readmodel.py) and a supervisor's erasure (services/intake/
# subjects.py) lock them. Taken the other way round, on PostgreSQL an erasure of one of the
# case's reports meanwhile held the case and waited for a report this held, and PostgreSQL
# killed one of the two ("deadlock detected"). SQLite has one writer at a time.
_LOCK_CASES = (select(_CASES.c.case_id).where(_CASES.c.case_id.in_(_IDS))
               .order_by(_CASES.c.case_id).with_for_update())


async def _erase_identity(session, before: datetime) -> int:
    rows = (await session.execute(_SEALED.limit(BATCH), {"before": before})).all()
    if rows:
        await session.execute(_LOCK_CASES, {"ids": sorted({row.case_id for row in rows})})
    reports = [row for row in rows if row.kind == "report"]
    if reports:
        await session.execute(
            _REPORTS.update().where(_REPORTS.c.report_id.in_(_IDS))
            # Sexes [], not None ("not kept", which widens a case to any sex when rebuilt).
            .values(identity=None, reporter_fingerprint=None, child_fingerprints=[],
                    child_sexes=[]),
            {"ids": [row.id for row in reports]})
        await session.execute(_CASES.update().where(_CASES.c.case_id.in_(_IDS))
                              .values(child_fingerprints=[], child_sexes=[]),
                              {"ids": sorted({row.case_id for row in reports})})
    if overrides := [row.id for row in rows if row.kind == "override"]:
        await session.execute(_OVERRIDES.update().where(_OVERRIDES.c.update_id.in_(_IDS))
                              .values(reason=None), {"ids": overrides})
    erased: dict[str, set[str]] = {}
    for row in rows:
        erased.setdefault(row.case_id, set()).update(
            ERASED if row.kind == "report" else OVERRIDE_ERASED)
    for case_id, fields in sorted(erased.items()):
        audit.record(session, *WHO, "erase", case_id, sorted(fields))
    return len(rows)


def _deleting(table, due):
    """A purge that deletes a batch of the rows `due` selects (by the columns it selects)."""
    statement = table.delete().where(
        tuple_(*due.selected_columns).in_(due.limit(bindparam("batch"))))

    async def purge(session, before: datetime) -> int:
        return (await session.execute(statement, {"before": before, "batch": BATCH})).rowcount

    return purge


_OLD_KEYS = select(_KEYS.c.user_id, _KEYS.c.key).where(_KEYS.c.created_at < _BEFORE)
_WITHDRAWN = select(WithdrawnInput.__table__.c.event_id).where(
    WithdrawnInput.__table__.c.withdrawn_at < _BEFORE)
_FINISHED = select(_DELIVERIES.c.alert_id).where(
    _DELIVERIES.c.status.in_(("delivered", "dead")), _DELIVERIES.c.updated_at < _BEFORE)


CLASSES = (
    RecordClass("identity", "intake", "retention_identity_days", _SEALED, _erase_identity),
    RecordClass("idempotency", "intake", "retention_idempotency_days", _OLD_KEYS,
                _deleting(_KEYS, _OLD_KEYS)),
    RecordClass("withdrawn", "intake", "retention_withdrawn_days", _WITHDRAWN,
                submission.purge_withdrawn),
    RecordClass("deliveries", "notifier", "retention_deliveries_days", _FINISHED,
                _deleting(_DELIVERIES, _FINISHED)),
)


async def purge(db: Database, settings, services, *, now: datetime | None = None,
                dry_run: bool = False,
                progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Purge (or with dry_run count) what each kept class of these services has outlived; the
    rows of each class per class name. A class kept for ever (0 days) is left out."""
    now = now or utcnow()
    counts: dict[str, int] = {}
    for record_class in CLASSES:
        days = getattr(settings, record_class.setting)
        if record_class.service not in services or not days:
            continue
        before = now - timedelta(days=days)
        if dry_run:
            async with db.reads() as session:
                counts[record_class.name] = await session.scalar(
                    select(func.count()).select_from(record_class.due.subquery()),
                    {"before": before})
            continue
        total = 0
        while True:  # a transaction per batch
            async with db.writes() as session, session.begin():
                done = await record_class.purge(session, before)
            total += done
            if progress and done:
                progress(record_class.name, total)
            if done < BATCH:
                break
        counts[record_class.name] = total
        if total:
            log.info("retention_purged", record_class=record_class.name, rows=total, days=days)
    return counts
