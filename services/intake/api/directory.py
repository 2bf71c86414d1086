"""Directory administration: admins add or change authorities and their contacts, on top of the
generated directory. Each change is validated, versioned and audited (action `directory_change`)."""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from schemas.directory import Authority, Contact
from services.common import audit
from services.common.auth import Principal
from services.escalation import directory_admin
from services.intake.api.deps import Body, Runtime, fail, invalid, role

router = APIRouter(prefix="/api/v1/authorities", tags=["admins"])


class AuthorityIn(Body):
    id: str | None = Field(None, description="Optional: the id in the path (`beacon directory "
                                             "show` gives it with the rest of the entry)")
    name: str = Field(min_length=1, max_length=200)
    tier: str
    agency: str
    unit_code: str = Field(min_length=1, max_length=16)
    contacts: list[Contact] = Field(description="In order of preference")
    supervisors: list[str] = Field(default_factory=list)
    parent: str | None = None


class AuthorityOut(BaseModel):
    authority: Authority
    source: str  # generated, or admin (an admin's entry is in force)
    version: int | None  # the admin entry's version


@router.get("/{authority_id}", response_model=AuthorityOut, responses={404: {}})
async def show(authority_id: str, request: Request, rt: Runtime,
               who: Annotated[Principal, Depends(role("admin", "auditor"))]):
    async with rt.db.reads() as session:
        row = await session.get(directory_admin.DirectoryEntry, authority_id)
    if row is not None:
        out = AuthorityOut(authority=Authority.model_validate(row.data), source="admin",
                           version=row.version)
    elif authority_id in rt.directory.base:
        out = AuthorityOut(authority=rt.directory.base.get(authority_id), source="generated",
                           version=None)
    else:
        await fail(request, who, "read", authority_id, "not_found",
                   HTTPException(404, f"no authority {authority_id}"))
    # contacts are personal data
    await audit.write(rt.db, who.user_id, who.role, "read", authority_id[:64], ["authority"])
    return out


@router.put("/{authority_id}", response_model=AuthorityOut, responses={422: {}})
async def put(authority_id: str, body: AuthorityIn, request: Request, rt: Runtime,
              who: Annotated[Principal, Depends(role("admin"))]):
    """Add an authority, or replace an existing one's entry (name, contacts, chain)."""
    a, problems = directory_admin.check_entry(
        body.model_dump(mode="json", exclude={"id"}), rt.directory, rt.pack.tiers,
        list(rt.pack.agencies), authority_id, production=rt.settings.env == "production")
    if body.id not in (None, authority_id):
        a, problems = None, [(("id",), f"is not the id in the path, {authority_id}"), *problems]
    if problems:
        await fail(request, who, "directory_change", authority_id, "rejected",
                   invalid(*problems))
    async with rt.db.writes() as session, session.begin():
        version = await directory_admin.save(session, a, who.user_id)
        audit.record(session, who.user_id, who.role, "directory_change", authority_id[:64],
                     sorted(set(AuthorityIn.model_fields) - {"id"}))
        await session.flush()
        await rt.directory.refresh(session)  # this process at once; others within a second
    return AuthorityOut(authority=a, source="admin", version=version)


@router.get("/{authority_id}/history")
async def history(authority_id: str, rt: Runtime,
                  who: Annotated[Principal, Depends(role("admin", "auditor"))]):
    async with rt.db.reads() as session:
        rows = await directory_admin.history(session, authority_id)
    await audit.write(rt.db, who.user_id, who.role, "read", authority_id[:64], ["history"])
    return [{"version": r.version, "changed_by": r.changed_by, "changed_at": r.changed_at,
             "authority": r.data} for r in rows]
