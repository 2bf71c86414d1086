"""A case's severity overrides with their reasons, opened for the hotline and for auditors.

The reason is free text that may name people, kept sealed in intake (never on Kafka). Operators
and supervisors in the case's jurisdiction, and auditors in their scope, may read it; everyone
else gets 403. Each reading is audited with the field name, never the text, and the answer is
never cached (docs/privacy.md).
"""

from datetime import datetime
from typing import Annotated

import structlog
from cryptography.fernet import InvalidToken
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel
from sqlalchemy import select

from services.common import audit
from services.common.auth import Principal
from services.intake.api.cases import readable_case
from services.intake.api.deps import Runtime, role
from services.intake.store import SeverityOverrideRow

router = APIRouter(prefix="/api/v1", tags=["cases"])
log = structlog.get_logger("beacon.intake")


class OverrideOut(BaseModel):
    update_id: str
    at: datetime
    severity: str
    by_user: str
    reason: str | None = None
    erased: bool = False  # by retention (docs/privacy.md)
    unreadable: bool = False  # sealed under a key that is not configured


class CaseOverrides(BaseModel):
    case_id: str
    overrides: list[OverrideOut]  # oldest first


_ROWS = SeverityOverrideRow
ASKED = ("override.reason",)  # named by a refusal, as identity's are (api/identity.py)


@router.get("/cases/{case_id}/overrides", response_model=CaseOverrides,
            responses={403: {}, 404: {}})
async def case_overrides(case_id: str, request: Request, response: Response, rt: Runtime,
                         who: Annotated[Principal, Depends(role(
                             "operator", "supervisor", "auditor", asks=ASKED))]):
    async with rt.db.reads() as session:
        await readable_case(session, request, who, case_id, list(ASKED))  # in the caller's scope
        rows = (await session.execute(
            select(_ROWS.update_id, _ROWS.created_at, _ROWS.severity, _ROWS.by_user, _ROWS.reason)
            .where(_ROWS.case_id == case_id, _ROWS.published.is_(True))  # pending: not accepted yet
            .order_by(_ROWS.created_at, _ROWS.update_id))).all()
    overrides = [_opened(rt.vault, row) for row in rows]
    shown = ["override.reason"] if any(o.reason for o in overrides) else []
    await audit.write(rt.db, who.user_id, who.role, "read", case_id, shown)
    response.headers["Cache-Control"] = "no-store"
    return CaseOverrides(case_id=case_id, overrides=overrides)


def _opened(vault, row) -> OverrideOut:
    out = OverrideOut(update_id=row.update_id, at=row.created_at, severity=row.severity,
                      by_user=row.by_user)
    if row.reason is None:
        out.erased = True
    else:
        try:
            out.reason = vault.open_text(row.reason)
        except InvalidToken:
            log.error("override_reason_unreadable", update_id=row.update_id)
            out.unreadable = True
    return out
