"""Request dependencies: the runtime, the caller, and role checks."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.common import audit
from services.common.auth import Principal, principal_for

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
    if who is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return who


def role(*allowed: str):
    async def check(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
        if who.role not in allowed:
            await deny(request, who, request.url.path, f"role {who.role} may not do this")
        return who

    return check


async def deny(request: Request, who: Principal, record_id: str, why: str) -> None:
    """Refuse with 403, and put the attempt in the audit trail."""
    async with request.app.state.runtime.db.writes() as session, session.begin():
        audit.record(session, who.user_id, who.role, "denied", record_id[:64], outcome="denied")
    raise HTTPException(403, why)


Runtime = Annotated[object, Depends(runtime)]
