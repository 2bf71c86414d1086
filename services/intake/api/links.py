"""The page behind the signed link in a message: `/a/{token}`.

It opens without identity, so it shows codes only (case id, severity, category, deadline) and
grants one action: the linked authority acknowledges the case. GET never changes anything (mail
scanners follow links); the acknowledgement is the form's POST. Who and what the link was for
come from the token: the signature binds the authority, which is tried against the case's
targets (a handful), so the link needs not carry it. Every use is in the audit trail, as user
`link:<authority id>`.
"""

from datetime import datetime
from html import escape
from urllib.parse import unquote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from schemas.events import Envelope, TargetAcknowledged
from services.common import audit
from services.common.auth import Principal
from services.common.db import utcnow
from services.common.links import LinkClaims, verify_link
from services.escalation import milestones
from services.escalation.engine import lead_category
from services.escalation.store import EscalationMilestone
from services.intake import readmodel, submission
from services.intake.readmodel import holds_duty
from services.intake.api.deps import Runtime
from services.intake.store import CaseView
from services.notifier.render import local_time

router = APIRouter(tags=["authorities"], include_in_schema=True)
ACTIONS = ("view", "ack")  # the notifier's link says "view"; the page offers the one action
WHEN = "%H:%M %d/%m/%Y"  # as the message gives a time, in Viet Nam time
VN_TIME = "(giờ Việt Nam / Viet Nam time, UTC+7)"


async def _claims(rt, token: str, action: str) -> tuple[CaseView, LinkClaims, dict] | None:
    """The case, the link's claims and its authority's target; None (audited) if not valid."""
    case_id = unquote(token.split(".", 1)[0])[:40]
    async with rt.db.reads() as session:
        case = await session.get(CaseView, case_id)
    if case is not None:
        now = utcnow()
        for secret in rt.settings.secret_keys():  # a link signed before a key rotation still works
            for target in case.targets:
                claims = verify_link(token, authority_id=target["authority_id"], secret=secret,
                                     now=now)
                if (claims is not None and claims.action in ACTIONS
                        and claims.case_id == case.case_id):
                    return case, claims, target
    # One answer for unknown, forged and expired links: nothing to learn from the difference.
    # The trail tells them apart: one naming a case is filed under it, for its access report.
    await audit.write(rt.db, "link:invalid", "link", action,
                      case.case_id if case is not None else "/a/[token]", ["link"],
                      outcome="denied" if case is not None else "not_found")
    return None


# Plain HTML for a phone: no script but the button's, big enough to tap.
STYLE = ("body{font-family:sans-serif;margin:0 auto;padding:12px;max-width:40em;line-height:1.4}"
         "small{color:#555}.late{color:#fff;background:#b00020;padding:8px}"
         "button{width:100%;min-height:48px;font-size:1.1em}")


def page(title: str, body: str, status: int = 200,
         headers: dict[str, str] | None = None) -> HTMLResponse:
    """A page of the link's: `body` is HTML already (escape what it quotes)."""
    return HTMLResponse(
        f"<!doctype html><html lang='vi'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<meta name='robots' content='noindex'><style>{STYLE}</style>"
        f"<title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>{body}</body></html>",
        status, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                         **(headers or {})})


# An officer who opened a broken or old link needs a way on, on the phone, in Vietnamese.
NOT_VALID = ("<p>Liên kết này không hợp lệ hoặc đã hết hạn. Hãy mở liên kết trong tin nhắn mới "
             "nhất về vụ việc, hoặc gọi Tổng đài 111. / This link is not valid or has expired. "
             "Open the link in the latest message about the case, or call the hotline "
             "(Tổng đài <a href='tel:111'>111</a>).</p>")


def not_valid() -> HTMLResponse:
    return page("Liên kết không hợp lệ / Link not valid", NOT_VALID, 404)


def _link_user(authority_id: str) -> Principal:
    return Principal(f"link:{authority_id}"[:64], "link", "national", (authority_id,))


async def _record(rt, who: Principal, case_id: str, outcome: str) -> None:
    """Each use of a valid link is recorded, the ones that change nothing too."""
    await audit.write(rt.db, who.user_id, who.role, "write", case_id, ["acknowledged"],
                      outcome=outcome)


# What the page cannot do, said where an officer expects a sign-in: there is no web client.
DETAILS = ("<p>Trang này không có thông tin cá nhân. Chi tiết vụ việc xem qua hệ thống của cơ "
           "quan kết nối với Beacon, bằng tài khoản được cấp. / This page shows no personal data. "
           "The case itself is read through your agency's system connected to Beacon, with the "
           "account issued to you.</p>")
CLOSED = ("Vụ việc đã đóng / Case closed",
          "<p>Vụ việc đã đóng, không cần xác nhận. / The case is closed; no acknowledgement is "
          "expected.</p>")
INFORM = ("Thông báo / For your information",
          "<p>Cơ quan này không cần xác nhận. / No acknowledgement is expected from this "
          "authority.</p>")


def _when(at: str | datetime | None) -> str:
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return escape(local_time(at, WHEN)) if at is not None else "-"


def _authority(rt, authority_id: str) -> str:
    """The directory's name (an authority's own, no person's), the id small beside it."""
    try:
        name = rt.directory.get(authority_id).name
    except KeyError:  # no longer in the directory: the id is all there is
        return f"<b>{escape(authority_id)}</b>"
    return f"<b>{escape(name)}</b> <small>({escape(authority_id)})</small>"


async def _facts(rt, case: CaseView, authority_id: str) -> str:
    async with rt.db.reads() as session:
        codes = (await readmodel.categories(session, [case]))[case.case_id]
    # Every category its reports gave, the one the message names first (the most severe): a
    # case opened as neglect showed only "neglect" after a linked report of sexual abuse.
    lead = lead_category(codes[0], codes[1:], rt.pack)
    shown = []
    for code in (lead, *(c for c in codes if c != lead)):
        category = rt.pack.categories.get(code)  # the pack's names, as in the message
        names = " / ".join(n for n in (category.label, category.name) if n) if category else ""
        shown.append(f"{escape(names)} ({escape(code)})".lstrip())
    return (f"<p>Vụ việc / Case <b>{escape(case.case_id)}</b>: {escape(case.severity or '-')} "
            f"{'; '.join(shown)}.</p>"
            f"<p>Cơ quan / For: {_authority(rt, authority_id)}</p>")


def _transferred(rt, target: dict) -> tuple[str, str] | None:
    """The page of a target that passed the case on (the read model's `transferred_to`, and
    `released` once the new authority acknowledged); None if it did not."""
    to = target.get("transferred_to")
    if not to:
        return None
    name = _authority(rt, to)
    if target.get("released"):
        return ("Đã bàn giao / Handed over",
                f"<p>Vụ việc đã được bàn giao cho {name}; cơ quan đó đã xác nhận. / The case was "
                f"handed over to {name}, which acknowledged it.</p>")
    # The sender stays on the clock until the new authority acknowledges (docs/authorities.md).
    return ("Đang chuyển giao / Transfer pending",
            f"<p>Vụ việc đã được chuyển cho {name}, đang chờ cơ quan đó xác nhận. Quý cơ quan vẫn "
            f"chịu trách nhiệm xử lý cho đến khi đó. / The case was transferred to {name} and awaits "
            f"its acknowledgement. Your authority remains responsible for the case until then.</p>")


async def _milestones(rt, case_id: str, authority_id: str) -> str:
    """The legal deadlines this authority holds and has yet to meet (the 12-hour emergency
    measure of a P1): an acknowledgement does not stop them, so the page says what comes next."""
    async with rt.db.reads() as session:
        rows = (await session.scalars(select(EscalationMilestone).where(
            EscalationMilestone.case_id == case_id,
            EscalationMilestone.authority_id == authority_id,
            EscalationMilestone.done_at.is_(None), EscalationMilestone.due_at.is_not(None))
            .order_by(EscalationMilestone.due_at))).all()
    if not rows:
        return ""
    now = utcnow()

    def names(code: str) -> str:  # the pack's names, as in the messages
        step = milestones.rule(code, rt.pack)
        return " / ".join(n for n in (step.label, step.name) if n) if step else code

    items = "".join(
        f"<li>{escape(names(r.milestone))} ({escape(r.milestone)}): "
        f"trước / by {_when(r.due_at)}{' <b>ĐÃ QUÁ HẠN / Overdue</b>' if r.due_at <= now else ''}"
        "</li>" for r in rows)
    return f"<p>Việc tiếp theo / Next deadlines {VN_TIME}:</p><ul>{items}</ul>"


@router.get("/a/{token}", response_class=HTMLResponse, responses={404: {}})
async def link_page(token: str, rt: Runtime):
    found = await _claims(rt, token, "read")
    if found is None:
        return not_valid()
    case, claims, target = found
    who = _link_user(claims.authority_id)
    await audit.write(rt.db, who.user_id, who.role, "read", case.case_id, ["link_page"])
    facts = await _facts(rt, case, claims.authority_id)
    if case.status == "closed":
        return page(CLOSED[0], facts + CLOSED[1])
    if transferred := _transferred(rt, target):  # before its acknowledgement: what holds now
        return page(transferred[0], facts + transferred[1])
    if target.get("acknowledged_at"):
        at = _when(target["acknowledged_at"])
        return page("Đã xác nhận / Acknowledged",
                    facts + f"<p>Cơ quan này đã xác nhận vụ việc lúc {at}. / This authority "
                    f"acknowledged the case at {at}. {VN_TIME}</p>"
                    + await _milestones(rt, case.case_id, claims.authority_id))
    if not holds_duty(target):
        return page(INFORM[0], facts + INFORM[1])
    ack_due = target.get("ack_due")  # as the message that carried the link gave it
    due = f"<p>Xác nhận đã tiếp nhận trước / Acknowledge receipt by: {_when(ack_due)} {VN_TIME}.</p>"
    if ack_due and datetime.fromisoformat(ack_due) < utcnow():
        due += ("<p class='late'><b>ĐÃ QUÁ HẠN / Overdue</b>: Ủy ban nhân dân và cơ quan cấp "
                "trên có thể đã được báo. Đề nghị xác nhận đã tiếp nhận ngay. / The deadline has "
                "passed: your supervisor and the tier above may have been alerted; still "
                "acknowledge now.</p>")
    # Disabled once sent: a poor connection invites taps again (the server answers repeats).
    form = (f"<form method='post' action='/a/{escape(token)}' "
            "onsubmit=\"this.querySelector('button').disabled=true\">"
            "<button type='submit'>Xác nhận đã tiếp nhận / Acknowledge receipt</button></form>" + DETAILS)
    return page("Xác nhận đã tiếp nhận vụ việc / Acknowledge receipt of this case",
                facts + due + form)


@router.post("/a/{token}", response_class=HTMLResponse, responses={404: {}, 409: {}, 503: {}})
async def link_acknowledge(token: str, rt: Runtime):
    found = await _claims(rt, token, "write")
    if found is None:
        return not_valid()
    case, claims, target = found
    who = _link_user(claims.authority_id)
    # A browser posted the form: refusals are pages too, not JSON.
    if case.status == "closed":
        await _record(rt, who, case.case_id, "rejected")
        return page(*CLOSED, 409)
    if not holds_duty(target):
        await _record(rt, who, case.case_id, "rejected")
        return page(*(_transferred(rt, target) or INFORM), 409)
    facts = await _facts(rt, case, claims.authority_id)
    if target.get("acknowledged_at"):
        await _record(rt, who, case.case_id, "replayed")  # a second click: answered, as before
        at = _when(target["acknowledged_at"])
        return page("Đã xác nhận / Acknowledged",
                    facts + f"<p>Cơ quan này đã xác nhận vụ việc trước đó, lúc {at}. / This "
                    f"authority had already acknowledged the case, at {at}. {VN_TIME}</p>"
                    + await _milestones(rt, case.case_id, claims.authority_id))
    event = TargetAcknowledged(case_id=case.case_id, authority_id=claims.authority_id,
                               by_user=who.user_id, at=utcnow())
    await submission.accept(rt, who, Envelope.wrap(event, submission.SOURCE), None, {}, None)
    at = _when(event.at)
    return page("Đã xác nhận / Acknowledged",
                facts + f"<p>Đã xác nhận lúc {at}. Xin cảm ơn. / Acknowledged at {at}. Thank you. "
                f"{VN_TIME}</p>" + await _milestones(rt, case.case_id, claims.authority_id), 202)
