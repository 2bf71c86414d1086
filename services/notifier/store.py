"""The notifier's durable queue: one row per alert, worked until delivered or dead-lettered."""

from datetime import datetime

from sqlalchemy import JSON, Index, Integer, String, bindparam, select, update
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base
from services.notifier import policy


class Delivery(Base):
    __tablename__ = "deliveries"
    alert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(40), index=True)
    authority_id: Mapped[str] = mapped_column(String(80))
    severity: Mapped[str] = mapped_column(String(4))
    alert: Mapped[dict] = mapped_column(JSON)  # the AlertRequested payload: codes only
    # pending (due at next_at), sending (leased until next_at), delivered, dead
    status: Mapped[str] = mapped_column(String(16), default="pending")
    contact_index: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # attempts on the current contact
    attempts_total: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(String(200))  # or the render fallback note
    # The Idempotency-Key of the bundle it was last leased in: after a crash the same rows go
    # again as the same bundle under the same key.
    bundle: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        # the claim's order (severity, then due time) within a status: read in index order
        Index("ix_deliveries_claim", "status", "severity", "next_at"),
        # a recipient's pending reminders, bundled into one message
        Index("ix_deliveries_recipient", "authority_id", "status", "created_at"),
    )


# The worker's statements, built once: Core, not ORM objects, because the notifier runs them for
# every delivery and an ORM row costs several times a statement (docs/performance.md).
_T = Delivery.__table__


def _due_in(status: str):
    """Rows in `status` whose next_at has come, in the order of ix_deliveries_claim."""
    return (select(_T).where(_T.c.status == status,
                             _T.c.next_at <= bindparam("now", type_=_T.c.next_at.type))
            .order_by(_T.c.severity, _T.c.next_at).limit(bindparam("batch")))


EXPIRED = _due_in("sending")  # a lease past its next_at: the worker that held it died
DUE = _due_in("pending")
# Not rows of a bundle that failed: they go again with their own bundle (Notifier._bundled).
MATES = (select(_T).where(_T.c.status == "pending", _T.c.authority_id == bindparam("authority"),
                           _T.c.severity.in_(("P3", "P4")), _T.c.alert_id != bindparam("alert"),
                           _T.c.bundle.is_(None))
          .order_by(_T.c.created_at).limit(policy.BUNDLE_MAX * 5))
_IDS = bindparam("ids", expanding=True)
# `status || ''`: the same test, but not one SQLite would look up in ix_deliveries_claim, which
# it otherwise prefers to the key, reading every leased row (8x the samples under py-spy).
_HELD = (_T.c.alert_id.in_(_IDS), _T.c.status.concat("") == "sending",
         _T.c.next_at == bindparam("until", type_=_T.c.next_at.type))
LEASE = (update(_T).where(_T.c.alert_id.in_(_IDS))
          .values(status="sending", next_at=bindparam("until"), updated_at=bindparam("at"),
                  bundle=bindparam("bundle")))
# A bundle's other rows: P3-P4 rows in one status are few, and read by ix_deliveries_claim.
def _bundle_in(status: str, *where):
    return select(_T).where(_T.c.status == status, _T.c.severity.in_(("P3", "P4")),
                            _T.c.bundle == bindparam("bundle"),
                            _T.c.alert_id != bindparam("alert"), *where)


BUNDLED_PENDING = _bundle_in("pending")
BUNDLED_EXPIRED = _bundle_in("sending", _T.c.next_at <= bindparam("now", type_=_T.c.next_at.type))
PUT_BACK = (update(_T).where(_T.c.alert_id == bindparam("id"))
             .values(status="pending", next_at=bindparam("until")))
DELIVERED = (update(_T).where(*_HELD)
              .values(status="delivered", attempts_total=_T.c.attempts_total + 1,
                      last_error=bindparam("note"), updated_at=bindparam("at"))
              .returning(_T.c.alert_id, _T.c.attempts_total))
LEASED = select(_T).where(*_HELD)
FAILED = (update(_T).where(_T.c.alert_id == bindparam("id"))
           .values(status=bindparam("status"), next_at=bindparam("next"),
                   contact_index=bindparam("contact"), attempt=bindparam("attempt"),
                   attempts_total=bindparam("total"), last_error=bindparam("error"),
                   updated_at=bindparam("at")))
