"""Directory administration: authorities and contacts changed by admins, on top of the generated
directory. Each change is a new version of that authority's entry, kept in a history table.

OverlayDirectory answers from an admin's entry first, then from the generated directory; every
process refreshes its entries from the database (they are shared), so a change reaches running
escalation instances within a second or so.
"""

import ipaddress
import re
from datetime import datetime
from urllib.parse import urlsplit

import structlog
from pydantic import ValidationError
from sqlalchemy import JSON, Integer, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from schemas.directory import Authority, authority_id
from services.common.db import Base, utcnow

log = structlog.get_logger("beacon.directory")
_PHONE = re.compile(r"^\+?[0-9]{6,15}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URL = re.compile(r"^https?://[^\s]+$")


class DirectoryEntry(Base):
    __tablename__ = "directory_entries"
    authority_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    data: Mapped[dict] = mapped_column(JSON)  # schemas.directory.Authority
    version: Mapped[int] = mapped_column(Integer)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]


class DirectoryChange(Base):
    __tablename__ = "directory_changes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    authority_id: Mapped[str] = mapped_column(String(80), index=True)
    version: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict] = mapped_column(JSON)
    changed_by: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime]


class OverlayDirectory:
    """The generated directory with admins' entries on top. `base` is swapped when a new rule
    pack (other tiers or agencies) comes into force."""

    def __init__(self, base):
        self.base = base
        self.entries: dict[str, Authority] = {}
        self.seen_change = 0  # the last DirectoryChange id loaded

    def get(self, authority_id_: str) -> Authority:
        found = self.entries.get(authority_id_)
        if found is None:
            return self.base.get(authority_id_)
        return self._in_force(found)

    def _in_force(self, entry: Authority) -> Authority:
        """An admin's entry with a parent or supervisors the directory no longer knows (saved
        under a pack with a district tier, say, before a rollback to one without) climbs as the
        generated entry does. Taken as it stands, the breach of a P1 failed on the unknown
        parent at every retry, and nobody above was told."""
        unknown = [x for x in (entry.parent, *entry.supervisors) if x and x not in self]
        if not unknown:
            return entry
        log.warning("directory_entry_out_of_date", authority_id=entry.id, unknown=unknown,
                    fix="save the entry again with `beacon directory set`")
        generated = self.base.get(entry.id) if entry.id in self.base else None
        change = {}
        if entry.parent in unknown:
            change["parent"] = generated.parent if generated else None
        if kept := [x for x in entry.supervisors if x not in unknown]:
            change["supervisors"] = kept
        elif entry.supervisors:
            change["supervisors"] = generated.supervisors if generated else []
        return entry.model_copy(update=change)

    def __contains__(self, authority_id_: object) -> bool:
        return authority_id_ in self.entries or authority_id_ in self.base

    def __getattr__(self, name):  # id_for, resolve, tiers, units...: the generated directory's
        return getattr(self.base, name)

    async def refresh(self, session: AsyncSession) -> bool:
        latest = await session.scalar(select(func.max(DirectoryChange.id))) or 0
        if latest == self.seen_change:
            return False
        rows = (await session.scalars(select(DirectoryEntry))).all()
        self.entries = {r.authority_id: Authority.model_validate(r.data) for r in rows}
        self.seen_change = latest
        return True


def check_entry(entry: dict, directory, tiers: list[str], agencies: list[str],
                authority_id_: str, production: bool = False,
                ) -> tuple[Authority | None, list[tuple[tuple, str]]]:
    """Validate an admin's entry (pure): the model, the id scheme, the contacts, and that its
    supervisors and parent exist. Returns the Authority or the problems, each as (field path,
    what is wrong). In `production` no webhook may point at this machine and no contact may be a
    generated demo one."""
    try:
        a = Authority.model_validate({**entry, "id": authority_id_})
    except ValidationError as exc:
        return None, [(e["loc"], e["msg"]) for e in exc.errors(include_url=False)]
    problems = []
    if a.id != authority_id(a.tier, a.unit_code, a.agency):
        problems.append((("id",), f"must be {{tier}}:{{unit_code}}:{{agency}}, "
                                  f"here {authority_id(a.tier, a.unit_code, a.agency)}"))
    placed = a.tier in tiers and a.unit_code in directory.units.by_kind.get(a.tier, ())
    if a.tier not in tiers:
        problems.append((("tier",), f"unknown tier {a.tier!r} (tiers: {', '.join(tiers)})"))
    elif not placed:
        # Routing finds authorities by the place of the incident: one for a unit that does not
        # exist would never be reached.
        problems.append((("unit_code",), f"no {a.tier} has code {a.unit_code!r}"))
    if a.agency not in agencies:
        problems.append((("agency",), f"unknown agency {a.agency!r}"))
    if not a.contacts:
        problems.append((("contacts",), "an authority needs at least one contact"))
    for i, c in enumerate(a.contacts):
        pattern = {"webhook": _URL, "email": _EMAIL, "sms": _PHONE}[c.channel]
        if not pattern.match(c.address):
            problems.append((("contacts", i, "address"), f"not a valid {c.channel} address"))
        elif c.channel == "webhook" and (why := _unsafe_url(c.address, loopback=not production)):
            problems.append((("contacts", i, "address"), why))
        if c.demo and production:
            # Kept from `beacon directory show` of a generated entry: alerts would fall back
            # to an address nobody reads, and the start-up count would not see it.
            problems.append((("contacts", i, "demo"), "a demo contact of the generated directory "
                             "reaches nobody in production: give the real address, or remove it"))
    for i, s in enumerate(a.supervisors):
        if s == a.id or s not in directory:
            problems.append((("supervisors", i), f"unknown authority {s!r}"))
    if a.parent is None:
        if a.tier in tiers and a.tier != tiers[-1]:
            # A breach climbs to the parent: without one, an unanswered case stops here.
            problems.append((("parent",), f"a {a.tier} authority needs a parent in a higher tier"))
    elif a.parent == a.id or a.parent not in directory:
        problems.append((("parent",), f"unknown authority {a.parent!r}"))
    elif placed:
        # A breach escalates to the parent: down or sideways, the chain would never reach the
        # national tier (and could loop); elsewhere, it would hand the case to another place.
        parent = directory.get(a.parent)
        if parent.tier not in tiers or tiers.index(parent.tier) <= tiers.index(a.tier):
            problems.append((("parent",), f"{a.parent!r} is not above the {a.tier} tier "
                             f"(tiers, lowest first: {', '.join(tiers)})"))
        elif parent.agency != a.agency:
            problems.append((("parent",), f"{a.parent!r} is not of the {a.agency} agency"))
        elif parent.unit_code != _above(directory, a, parent.tier):
            problems.append((("parent",), f"{a.parent!r} does not cover {a.tier} {a.unit_code}"))
    return (None if problems else a), problems


def _unsafe_url(url: str, loopback: bool) -> str | None:
    """Why the notifier must not post signed alerts to this URL, or None. An admin's typo, or
    a stolen admin token, must not turn the notifier against the machines around it: the
    cloud's metadata service, the database, Beacon's own API. Host names are not resolved
    here; a receiver's name is the network's business."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password (every log of the request would show it)"
    host = parts.hostname or ""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and (ip.is_link_local or ip.is_unspecified or ip.is_multicast):
        return "a link-local, unspecified or multicast address is no receiver"
    if not loopback and (host == "localhost" or (ip is not None and ip.is_loopback)):
        return "this machine's own address takes no alerts in production"
    return None


def _above(directory, a: Authority, tier: str) -> str | None:
    """The unit of `tier` that holds the authority's unit; None when the units do not say."""
    try:
        return directory.units.above(a.tier, a.unit_code, tier)
    except KeyError:
        return None


async def save(session: AsyncSession, a: Authority, user_id: str) -> int:
    row = await session.get(DirectoryEntry, a.id)
    data = a.model_dump(mode="json")
    if row is None:
        row = DirectoryEntry(authority_id=a.id, data=data, version=1, updated_by=user_id,
                             updated_at=utcnow())
        session.add(row)
    else:
        row.data, row.version, row.updated_by, row.updated_at = (
            data, row.version + 1, user_id, utcnow())
    session.add(DirectoryChange(authority_id=a.id, version=row.version, data=data,
                                changed_by=user_id, changed_at=utcnow()))
    return row.version


async def history(session: AsyncSession, authority_id_: str) -> list[DirectoryChange]:
    return list((await session.scalars(select(DirectoryChange).where(
        DirectoryChange.authority_id == authority_id_).order_by(DirectoryChange.id))).all())
