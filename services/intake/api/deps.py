"""Request dependencies: the runtime, the caller, and role checks."""

from typing import Annotated, NoReturn

import structlog

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from services.common import audit
from services.common.auth import Principal, principal_for, refused_holder
from services.intake.validation import field_error

log = structlog.get_logger("beacon.intake")
bearer = HTTPBearer(auto_error=False, description="A token from `beacon users token`")


async def runtime(request: Request):
    # async: FastAPI runs a plain `def` dependency on a worker thread, a hop per request
    return request.app.state.runtime


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if creds is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    async with request.app.state.runtime.db.reader() as reads:
        who = await principal_for(reads, creds.credentials)
        refused = None if who is not None else await refused_holder(reads, creds.credentials)
    if who is None:
        await _refused_token(request, refused)
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = who  # a body FastAPI refuses is audited against its caller (app)
    return who


async def _refused_token(request: Request, holder: tuple[str, str, str] | None) -> None:
    """A token refused: a revoked one, or one of a disabled user, still in use may be a lost or
    stolen one, so the attempt goes in the audit trail under its user; one Beacon never issued
    names no one, and is logged (a guessing run shows there)."""
    if holder is None:
        log.warning("token_unknown", path=request.url.path,
                    client=request.client.host if request.client else None)
        return
    user_id, user_role, why = holder
    log.warning("token_refused", user_id=user_id, why=why, path=request.url.path)
    await audit.write(request.app.state.runtime.db, user_id, user_role, "denied",
                      _record_of(request)[:64], outcome=why)


def role(*allowed: str, asks: tuple[str, ...] = ()):
    """The caller, if its role is one of `allowed`. `asks`: the fields the call reaches
    (identity, ...), named in a refusal's audit record, so that a search of the trail by
    field finds the refused attempts beside the granted ones."""
    async def check(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in allowed:
            await deny(request, who, _record_of(request), f"role {who.role} may not do this",
                       list(asks))
        return who

    return check


def _record_of(request: Request) -> str:
    # A refusal on a case is filed under its id, so the case's access report shows it; other
    # paths name no one record, and are filed under the path.
    case_id = request.path_params.get("case_id")
    if case_id and request.url.path.startswith("/api/v1/cases/"):
        return case_id
    return request.url.path


async def deny(request: Request, who: Principal, record_id: str, why: str,
               fields: list[str] | None = None) -> NoReturn:
    """Refuse with 403, and put the attempt in the audit trail, with the names of the fields
    it asked for (never their values)."""
    await fail(request, who, "denied", record_id, "denied", HTTPException(403, why), fields)


class Answered(Exception):  # noqa: N818 (not an error: the first attempt's answer)
    """A retry with an Idempotency-Key whose first attempt was accepted: its answer, whatever a
    check would say now (the case closed since, the rule pack changed)."""

    def __init__(self, answer: dict):
        self.answer = answer


async def fail(request: Request, who: Principal, action: str, record_id: str, outcome: str,
               error: Exception, fields: list[str] | None = None) -> NoReturn:
    """Raise `error` for an attempt the caller was let make (no such case: "not_found"; an input
    refused as it stands: "rejected"), recorded first: the trail holds every attempt, not only
    those that succeed. Its own transaction, committed before the request fails.
    A keyed input (`request.state.idempotency`) already accepted under its key is answered as
    it was the first time instead (raises Answered)."""
    if (idem := getattr(request.state, "idempotency", None)) is not None:
        from services.intake import submission

        try:
            earlier = await submission.replay(request.app.state.runtime, who, idem)
        except HTTPException:
            earlier = None  # the key names another body or is in use: the refusal stands
        if earlier is not None:
            await audit.write(request.app.state.runtime.db, who.user_id, who.role, "write",
                              earlier.get("case_id", record_id)[:64], fields, outcome="replayed")
            raise Answered(earlier)
    if fields is None and isinstance(error, RequestValidationError):
        fields = failing_fields(error.errors())
    await audit.write(request.app.state.runtime.db, who.user_id, who.role, action, record_id[:64], fields,
                      outcome=outcome)
    request.state.audited = True
    raise error


class Body(BaseModel):
    """A request body that refuses fields it does not know, as a report does: a misspelt
    optional field would otherwise be dropped without a word."""

    model_config = ConfigDict(extra="forbid")


def invalid(*problems: tuple[tuple, str]) -> RequestValidationError:
    """A 422 in the shape FastAPI gives its own, whichever check refused the body: each problem
    as its field's path and what is wrong."""
    return RequestValidationError([field_error(loc, msg) for loc, msg in problems])


async def audit_refused_body(request: Request, errors: list[dict]) -> None:
    """Record a body that FastAPI's own validation refused before any handler ran, against
    the caller, if one was identified, and the case or path it named (field paths only)."""
    who = getattr(request.state, "principal", None)
    if who is None or getattr(request.state, "audited", False):
        return
    action = "read" if request.method in ("GET", "HEAD") else "write"
    await audit.write(request.app.state.runtime.db, who.user_id, who.role, action,
                      _record_of(request)[:64], failing_fields(errors), outcome="rejected")


def failing_fields(errors) -> list[str]:
    """The paths of a refused body's failing fields, for the audit trail. The name of an
    unexpected field is the caller's text, so it is left out."""
    fields = set()
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())[1:]]
        if error.get("type") == "extra_forbidden":
            loc = loc[:-1] + ["(unexpected field)"]
        fields.add(".".join(loc)[:100] or "(body)")
    return sorted(fields)


Runtime = Annotated[object, Depends(runtime)]
