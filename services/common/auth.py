"""Users, roles, jurisdiction scopes and bearer tokens (stored as SHA-256 hashes, never in clear)."""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import JSON, Boolean, ForeignKey, String, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow

Role = Literal["operator", "supervisor", "authority", "admin", "auditor"]
ROLES: tuple[str, ...] = ("operator", "supervisor", "authority", "admin", "auditor")


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    # "national", "province:<code>" or "commune:<code>": where this user may act.
    scope: Mapped[str] = mapped_column(String(32), default="national")
    # For the authority role: the directory authorities this user answers for.
    authority_ids: Mapped[list] = mapped_column(JSON, default=list)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]


class Token(Base):
    __tablename__ = "tokens"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the API sees it."""

    user_id: str
    role: str
    scope: str
    authority_ids: tuple[str, ...] = ()

    def covers(self, province_code: int, commune_code: int) -> bool:
        kind, _, code = self.scope.partition(":")
        if kind == "national":
            return True
        if kind == "province":
            return int(code) == province_code
        return kind == "commune" and int(code) == commune_code


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_scope(scope: str) -> str:
    kind, _, code = scope.partition(":")
    if scope == "national" or (kind in ("province", "commune") and code.isdigit()):
        return scope
    raise ValueError(f"scope must be national, province:<code> or commune:<code>, not {scope!r}")


async def create_user(
    session: AsyncSession, user_id: str, name: str, role: str, scope: str = "national",
    authority_ids: list[str] | None = None,
) -> User:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if role == "admin" and scope != "national":
        # Rule packs and the directory are national: an admin's scope could not narrow them.
        raise ValueError("an admin's scope must be national: rule packs and the directory "
                         "apply to the whole country")
    user = User(
        id=user_id, name=name, role=role, scope=validate_scope(scope),
        authority_ids=authority_ids or [], created_at=utcnow(),
    )
    session.add(user)
    return user


async def issue_token(session: AsyncSession, user_id: str, label: str = "") -> str:
    token = "bk_" + secrets.token_urlsafe(32)
    session.add(Token(hash=hash_token(token), user_id=user_id, label=label, created_at=utcnow()))
    return token


async def revoke_tokens(session: AsyncSession, user_id: str) -> int:
    rows = (await session.scalars(
        select(Token).where(Token.user_id == user_id, Token.revoked_at.is_(None))
    )).all()
    for row in rows:
        row.revoked_at = utcnow()
    return len(rows)


# Built once: every request looks its caller up (docs/performance.md).
_PRINCIPAL = (
    select(User.id, User.role, User.scope, User.authority_ids).join(Token, Token.user_id == User.id)
    .where(Token.hash == bindparam("hash"), Token.revoked_at.is_(None), User.disabled.is_(False))
)


async def principal_for(reads: AsyncSession | AsyncConnection, token: str) -> Principal | None:
    row = (await reads.execute(_PRINCIPAL, {"hash": hash_token(token)})).one_or_none()
    if row is None:
        return None
    return Principal(row.id, row.role, row.scope, tuple(row.authority_ids or ()))


async def refused_holder(reads: AsyncSession | AsyncConnection,
                         token: str) -> tuple[str, str, str] | None:
    """(user id, role, why) when `token` is a revoked one, or one of a disabled user; None when
    Beacon never issued it. Asked only after a refusal, so the common path stays one query."""
    row = (await reads.execute(
        select(User.id, User.role, User.disabled, Token.revoked_at)
        .join(Token, Token.user_id == User.id).where(Token.hash == hash_token(token)))).one_or_none()
    if row is None:
        return None
    return row.id, row.role, "token_revoked" if row.revoked_at is not None else "user_disabled"
