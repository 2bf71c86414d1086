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

from schemas.events import Envelope, TargetAcknowledged
from services.common import audit
from services.common.auth import Principal
from services.common.db import utcnow
from services.common.links import LinkClaims, verify_link
from services.intake import submission
from services.intake.api.cases import holds_duty
from services.intake.api.deps import Runtime
from services.intake.store import CaseView
from services.notifier.render import local_time

router = APIRouter(tags=["authorities"], include_in_schema=True)
ACTIONS = ("view", "ack")  # the notifier's link says "view"; the page offers the one action


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


def page(title: str, body: str, status: int = 200,
         headers: dict[str, str] | None = None) -> HTMLResponse:
    """A page of the link's: `body` is HTML already (escape what it quotes)."""
    return HTMLResponse(
        f"<!doctype html><html lang='vi'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width'><meta name='robots' content='noindex'>"
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
DETAILS = ("<p>This page shows no personal data. The case itself is read through your agency's "
           "system connected to Beacon, with the account issued to you. / Trang này không có "
           "thông tin cá nhân. Chi tiết vụ việc xem qua hệ thống của cơ quan kết nối với Beacon, "
           "bằng tài khoản được cấp.</p>")


def _facts(rt, case: CaseView, authority_id: str) -> str:
    category = rt.pack.categories.get(case.category)  # the pack's names, as in the message
    names = " / ".join(n for n in (category.label, category.name) if n) if category else ""
    return (f"<p>Case <b>{escape(case.case_id)}</b>: {escape(case.severity or '-')} "
            f"{escape(names)} ({escape(case.category)}). For: {escape(authority_id)}.</p>")


@router.get("/a/{token}", response_class=HTMLResponse, responses={404: {}})
async def link_page(token: str, rt: Runtime):
    found = await _claims(rt, token, "read")
    if found is None:
        return not_valid()
    case, claims, target = found
    who = _link_user(claims.authority_id)
    await audit.write(rt.db, who.user_id, who.role, "read", case.case_id, ["link_page"])
    facts = _facts(rt, case, claims.authority_id)
    if case.status == "closed":
        return page("Case closed / Vụ việc đã đóng",
                    facts + "<p>The case is closed; no acknowledgement is expected. / Vụ việc "
                    "đã đóng, không cần xác nhận.</p>")
    if target.get("acknowledged_at"):
        return page("Acknowledged / Đã xác nhận",
                    facts + "<p>This authority has acknowledged the case.</p>")
    if not holds_duty(target):
        return page("For your information / Thông báo",
                    facts + "<p>No acknowledgement is expected. / Không cần xác nhận.</p>")
    ack_due = target.get("ack_due")  # as the message that carried the link gave it
    shown = local_time(datetime.fromisoformat(ack_due), "%H:%M %d/%m/%Y") if ack_due else "-"
    due = (f"<p>Acknowledge by / Xác nhận trước: {escape(shown)} "
           "(Viet Nam time, UTC+7).</p>")
    form = (f"<form method='post' action='/a/{escape(token)}'>"
            "<button type='submit'>Acknowledge / Xác nhận</button></form>" + DETAILS)
    return page("Acknowledge this alert / Xác nhận cảnh báo", facts + due + form)



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
        return page("Case closed / Vụ việc đã đóng",
                    "<p>The case is closed; no acknowledgement is expected. / Vụ việc đã đóng, "
                    "không cần xác nhận.</p>", 409)
    if not holds_duty(target):
        await _record(rt, who, case.case_id, "rejected")
        return page("For your information / Thông báo",
                    "<p>No acknowledgement is expected from this authority. / Cơ quan này "
                    "không cần xác nhận.</p>", 409)
    if target.get("acknowledged_at"):
        await _record(rt, who, case.case_id, "replayed")  # a second click: answered, as before
        return page("Acknowledged", "<p>This authority had already acknowledged the case.</p>")
    event = TargetAcknowledged(case_id=case.case_id, authority_id=claims.authority_id,
                               by_user=who.user_id, at=utcnow())
    await submission.accept(rt, who, Envelope.wrap(event, submission.SOURCE), None, {}, None)
    return page("Acknowledged", f"<p>Case <b>{escape(case.case_id)}</b> acknowledged for "
                                f"{escape(claims.authority_id)}. Thank you.</p>", 202)
