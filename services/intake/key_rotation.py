"""`beacon keys rotate`: every sealed identity re-sealed under the current BEACON_SECRET_KEY, and
its keyed hashes made again under it, then every severity override's sealed reason re-sealed, so
that the previous keys can be dropped.

The hashes are what duplicate reports are matched on, and they are keyed by the secret. Until
this has run, new reports are matched under every listed key (IdentityVault.matching), so the
previous keys must stay listed until it has finished (docs/privacy.md).
"""

from collections.abc import Callable

from cryptography.fernet import InvalidToken
from sqlalchemy import bindparam, select

from services.common.db import Database
from services.intake.identity import IdentityVault
from services.intake.store import CaseView, ReportRow, SeverityOverrideRow, WithdrawnInput

BATCH = 200  # reports (or override reasons) per transaction

_REPORTS, _CASES = ReportRow.__table__, CaseView.__table__
_NEXT = (select(_REPORTS.c.report_id, _REPORTS.c.case_id, _REPORTS.c.identity)
         .where(_REPORTS.c.identity.is_not(None), _REPORTS.c.report_id > bindparam("after"))
         .order_by(_REPORTS.c.report_id).limit(bindparam("batch")))
# Only what still holds identity: a report erased since it was read stays erased.
_RESEAL = (_REPORTS.update().where(_REPORTS.c.report_id == bindparam("id"),
                                   _REPORTS.c.identity.is_not(None))
           .values(identity=bindparam("sealed"), child_fingerprints=bindparam("children"),
                   reporter_fingerprint=bindparam("reporter")))
_OF_CASES = (select(_REPORTS.c.case_id, _REPORTS.c.child_fingerprints)
             .where(_REPORTS.c.case_id.in_(bindparam("cases", expanding=True)),
                    # a report refused with 503 is not one of the case's (submission.py)
                    _REPORTS.c.event_id.not_in(select(WithdrawnInput.event_id))))
# The batch's case rows before their reports, in case id order, as the read model, an erasure
# and the retention purge take them (PostgreSQL): the other way round, an erasure meanwhile
# deadlocked with the rotation.
_LOCK_CASES = (select(_CASES.c.case_id).where(_CASES.c.case_id.in_(bindparam("cases", expanding=True)))
               .order_by(_CASES.c.case_id).with_for_update())
_CASE_HASHES = (_CASES.update().where(_CASES.c.case_id == bindparam("id"))
                .values(child_fingerprints=bindparam("children")))

_OVERRIDES = SeverityOverrideRow.__table__
_NEXT_REASONS = (select(_OVERRIDES.c.update_id, _OVERRIDES.c.reason)
                 .where(_OVERRIDES.c.reason.is_not(None),
                        _OVERRIDES.c.update_id > bindparam("after"))
                 .order_by(_OVERRIDES.c.update_id).limit(bindparam("batch")))
_RESEAL_REASON = (_OVERRIDES.update().where(_OVERRIDES.c.update_id == bindparam("id"),
                                             _OVERRIDES.c.reason.is_not(None))  # as _RESEAL
                  .values(reason=bindparam("sealed")))


class RotationError(Exception):
    pass


async def rotate(db: Database, vault: IdentityVault,
                 progress: Callable[[str, int], None] | None = None) -> tuple[int, int]:
    """Re-seal every report that still holds identity, then every override reason; returns how
    many of each. `progress(what, done)` after each batch. Safe to run again."""
    return (await _reports(db, vault, progress), await _reasons(db, vault, progress))


async def _reports(db: Database, vault: IdentityVault, progress) -> int:
    after, total = "", 0
    while True:
        async with db.writes() as session, session.begin():
            rows = (await session.execute(_NEXT, {"after": after, "batch": BATCH})).all()
            if not rows:
                return total
            changes = []
            for row in rows:
                try:
                    children, reporter = vault.fingerprints(vault.open(row.identity))
                    sealed = vault.reseal(row.identity)
                except InvalidToken:
                    raise RotationError(
                        f"report {row.report_id}: no configured key opens its identity; add the "
                        "key it was sealed with to BEACON_SECRET_KEY_PREVIOUS") from None
                changes.append({"id": row.report_id, "sealed": sealed, "children": children,
                                "reporter": reporter})
            await session.execute(_LOCK_CASES, {"cases": sorted({row.case_id for row in rows})})
            await session.execute(_RESEAL, changes)
            # A case's hashes are those of its reports; a case whose reports span batches is
            # made again with each, the last time with all of them re-made.
            hashes: dict[str, set[str]] = {row.case_id: set() for row in rows}
            for case_id, children in (await session.execute(
                    _OF_CASES, {"cases": list(hashes)})).all():
                hashes[case_id].update(children or [])
            await session.execute(_CASE_HASHES, [
                {"id": case_id, "children": sorted(children)} for case_id, children in hashes.items()])
        after, total = rows[-1].report_id, total + len(rows)
        if progress:
            progress("reports", total)


async def _reasons(db: Database, vault: IdentityVault, progress) -> int:
    after, total = "", 0
    while True:
        async with db.writes() as session, session.begin():
            rows = (await session.execute(_NEXT_REASONS, {"after": after, "batch": BATCH})).all()
            if not rows:
                return total
            changes = []
            for row in rows:
                try:
                    changes.append({"id": row.update_id, "sealed": vault.reseal(row.reason)})
                except InvalidToken:
                    raise RotationError(
                        f"override {row.update_id}: no configured key opens its reason; add the "
                        "key it was sealed with to BEACON_SECRET_KEY_PREVIOUS") from None
            await session.execute(_RESEAL_REASON, changes)
        after, total = rows[-1].update_id, total + len(rows)
        if progress:
            progress("override reasons", total)
