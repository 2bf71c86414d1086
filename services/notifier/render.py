"""Render an alert into a PII-free message per channel and language.

Templates live in templates/<lang>/ and run in a Jinja2 sandbox with StrictUndefined, so an
admin-edited template can neither reach Python internals nor silently print blanks. The context
is an allow-list of codes built here (`build_context`): no template can reach identity, because
none is ever given to it (and AlertRequested carries none).

A template that fails does not drop the alert: a plain built-in message goes instead, and
`Message.render_error` says which template failed (an error class, never content).
"""

import unicodedata
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from schemas.events import AlertRequested, Label
from services.notifier.channels.base import Message
from services.notifier.channels.sms import _GSM7_BASIC, _GSM7_EXT, sms_segments

__all__ = [
    "CATEGORY_LABELS", "LANGS", "MILESTONE_LABELS", "Renderer", "build_context", "fold_to_gsm7",
    "render", "local_time", "render_bundle", "sms_segments",
]

log = structlog.get_logger(__name__)

TEMPLATES_DIR = Path(__file__).parent / "templates"
LOCAL_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
LANGS = ("vi", "en")
DEFAULT_LANG = "vi"
LOCAL_FORMAT = "%H:%M %d/%m/%Y"  # a time in messages, and the webhook's `ack_due_local`
SMS_MAX_SEGMENTS = 2  # DOMAIN: a P1 SMS fits two segments; we hold every SMS to it

CATEGORY_LABELS: dict[str, dict[str, str]] = {
    "vi": {
        "SEX_ABUSE": "Xâm hại tình dục",
        "TRAFFICKING": "Mua bán, bắt cóc trẻ em",
        "MISSING": "Trẻ mất tích, bỏ nhà",
        "PHYS_VIOLENCE": "Bạo lực thể chất",
        "SELF_HARM": "Tự hại, tự tử",
        "ONLINE_ABUSE": "Xâm hại trên mạng",
        "EXPLOITATION": "Bóc lột, lao động trái phép",
        "NEGLECT": "Bỏ rơi, bỏ mặc",
        "EMOTIONAL": "Bạo lực tinh thần",
        "BULLYING": "Bạo lực học đường",
        "CHILD_MARRIAGE": "Tảo hôn",
        "INJURY": "Tai nạn thương tích",
        "HAZARD": "Môi trường không an toàn",
        "SPECIAL_CIRC": "Hoàn cảnh đặc biệt",
        "INFO": "Tư vấn, thông tin",
    },
    "en": {
        "SEX_ABUSE": "Sexual abuse",
        "TRAFFICKING": "Trafficking or abduction",
        "MISSING": "Missing or runaway child",
        "PHYS_VIOLENCE": "Physical violence",
        "SELF_HARM": "Self-harm or suicide",
        "ONLINE_ABUSE": "Online abuse",
        "EXPLOITATION": "Exploitation or illegal labour",
        "NEGLECT": "Abandonment or neglect",
        "EMOTIONAL": "Emotional abuse",
        "BULLYING": "School violence",
        "CHILD_MARRIAGE": "Child marriage",
        "INJURY": "Injury accident",
        "HAZARD": "Unsafe environment",
        "SPECIAL_CIRC": "Special circumstances",
        "INFO": "Advice or information",
    },
}
# The shipped packs' steps: for an alert written before alerts carried the pack's English
# name, and for a pack that gives none.
MILESTONE_LABELS: dict[str, dict[str, str]] = {
    "vi": {
        "emergency_measure": "Biện pháp bảo vệ khẩn cấp",
        "initial_assessment": "Đánh giá ban đầu",
        "case_plan": "Kế hoạch hỗ trợ, can thiệp",
        "police_verification": "Xác minh tin báo tội phạm",
    },
    "en": {
        "emergency_measure": "Emergency protection measure",
        "initial_assessment": "Initial assessment",
        "case_plan": "Support and intervention plan",
        "police_verification": "Verification of a crime report",
    },
}
KIND_LABELS = {
    "vi": {
        "alert": "Cảnh báo mới", "inform": "Thông báo", "reminder": "Nhắc lại",
        "breach": "Quá hạn xác nhận", "supervisor": "Đề nghị đôn đốc",
        "escalated": "Chuyển lên quý cơ quan", "closed": "Vụ việc đã đóng",
    },
    "en": {
        "alert": "New alert", "inform": "For information", "reminder": "Reminder",
        "breach": "Acknowledgement overdue", "supervisor": "Follow-up needed",
        "escalated": "Escalated to you", "closed": "Case closed",
    },
}
# An alert to an authority already on the case says why it comes again ("New alert" twice
# could not tell what had changed); {previous} is the severity before a raise.
CAUSE_LABELS = {
    "vi": {"raised": "Nâng mức độ từ {previous}", "sooner": "Hạn xác nhận sớm hơn",
           "must_act": "Nay phải xử lý", "again": "Cảnh báo lại", "reopened": "Mở lại vụ việc",
           "transferred": "Được chuyển đến"},
    "en": {"raised": "Severity raised from {previous}", "sooner": "Earlier deadline",
           "must_act": "Now for action", "again": "Alerting again", "reopened": "Case reopened",
           "transferred": "Transferred to you"},
}
# The shipped packs' tiers, for an alert written before alerts carried the pack's names (and a
# pack that gives none). Vietnamese as it reads after "cấp", English before "level".
TIER_LABELS = {
    "vi": {"commune": "xã", "district": "huyện", "province": "tỉnh", "national": "trung ương"},
    "en": {"commune": "commune", "district": "district", "province": "province",
           "national": "national"},
}
AGENCY_LABELS = {
    "vi": {"child_protection": "bảo vệ trẻ em", "police": "công an", "health": "y tế",
           "education": "giáo dục", "cyber_police": "an ninh mạng",
           "people_committee": "Ủy ban nhân dân"},
    "en": {"child_protection": "child protection", "police": "police", "health": "health",
           "education": "education", "cyber_police": "cyber police",
           "people_committee": "People's Committee"},
}
SETTING_LABELS = {
    "vi": {"home": "gia đình", "school": "trường học", "care_facility": "cơ sở chăm sóc, trợ giúp",
           "health_facility": "cơ sở y tế", "service_provider": "cơ sở cung cấp dịch vụ",
           "online": "trên mạng", "public": "nơi công cộng", "other": "nơi khác"},
    "en": {"home": "home", "school": "school", "care_facility": "care facility",
           "health_facility": "health facility", "service_provider": "service provider",
           "online": "online", "public": "public place", "other": "elsewhere"},
}
# A supervisor is told, not held (role inform), but it is asked to act: "để biết" (for
# information) read as a message to file away.
# An act alert without an acknowledgement deadline goes to a target that has acknowledged (a
# step to take, the case made more severe): asked to acknowledge again, it could not.
ROLE_LABELS = {
    "vi": {"act": "xử lý và xác nhận đã tiếp nhận", "inform": "để biết, không cần xác nhận",
           "follow_up": "đôn đốc, không cần xác nhận",
           "acknowledged": "xử lý (đã xác nhận tiếp nhận, không cần xác nhận lại)"},
    "en": {"act": "action, acknowledge receipt", "inform": "for information, no acknowledgement",
           "follow_up": "follow up, no acknowledgement",
           "acknowledged": "action (receipt acknowledged already)"},
}


def _role(alert: AlertRequested) -> str:
    if alert.kind == "supervisor":
        return "follow_up"
    return "acknowledged" if alert.role == "act" and alert.ack_due is None else alert.role


def _lang(lang: str) -> str:
    return lang if lang in LANGS else DEFAULT_LANG


def _label(table: dict[str, dict[str, str]], lang: str, code: str,
           pack: Label | None = None) -> str:
    """The rule pack's name when the alert carries it (a pack may rename a shipped code or add
    one), else ours; a code nobody named shows as itself."""
    given = pack and (pack.en if lang == "en" else pack.vi)
    return given or table[lang].get(code) or (pack and pack.vi) or code


# A breach about a milestone: the holder missed the step itself, not an acknowledgement.
MILESTONE_BREACH_LABELS = {"vi": "Quá hạn thực hiện", "en": "Step overdue"}


def _kind_label(alert: AlertRequested, lang: str) -> str:
    if alert.kind == "alert" and alert.cause in CAUSE_LABELS[lang]:
        return CAUSE_LABELS[lang][alert.cause].format(previous=alert.previous_severity or "?")
    if alert.kind == "breach" and alert.milestone:
        return MILESTONE_BREACH_LABELS[lang]
    return _label(KIND_LABELS, lang, alert.kind)


def _milestone_label(alert: AlertRequested, lang: str) -> str | None:
    """The step as the pack names it in `lang`, falling back as a category's name does."""
    if alert.milestone is None:
        return None
    pack = Label(vi=alert.milestone_label, en=alert.milestone_name) if alert.milestone_label else None
    return _label(MILESTONE_LABELS, lang, alert.milestone, pack)


def _milestone_name(alert: AlertRequested) -> str | None:
    """The step's English name: the pack's, else ours of a shipped step; null, not the
    Vietnamese label, when neither has one (a receiver may show it as English)."""
    if alert.milestone is None:
        return None
    return alert.milestone_name or MILESTONE_LABELS["en"].get(alert.milestone)


def local_time(dt: datetime | None, fmt: str, for_people: bool = True) -> str | None:
    """A time as messages show it: Viet Nam time (the link page shows it the same way). For
    people, a deadline at midnight, as working days from a day off give, reads as 24:00 of the
    day before ("24 giờ ngày 23/02"): "00:00 24/02" was read as the end of the 24th, a day
    late. Machines (the webhook body) get the plain time, which their parsers take."""
    if dt is None:
        return None
    local = dt.astimezone(LOCAL_TZ)
    if for_people and local.time() == time(0) and fmt.startswith("%H:%M"):
        return "24:00" + (local - timedelta(days=1)).strftime(fmt.removeprefix("%H:%M"))
    return local.strftime(fmt)


def _passed(due: datetime | None, now: datetime | None) -> bool:
    return due is not None and now is not None and due <= now


def build_context(alert: AlertRequested, lang: str, link: str,
                  now: datetime | None = None) -> dict[str, Any]:
    """The only values a template sees: IDs, codes, their labels, the deadline and the link.
    `now`: when the message is sent. A deadline already passed then is told as overdue since
    then, not as one to meet (the alert was queued late, or the notifier was behind); None
    tells every deadline as given."""
    lang = _lang(lang)
    return {
        "lang": lang,
        "alert_id": alert.alert_id,
        "case_id": alert.case_id,
        "authority_id": alert.authority_id,
        "tier": alert.tier,
        "tier_label": _label(TIER_LABELS, lang, alert.tier, alert.tier_label),
        "agency": alert.agency,
        "agency_label": _label(AGENCY_LABELS, lang, alert.agency, alert.agency_label),
        "role": alert.role,
        "role_label": _label(ROLE_LABELS, lang, _role(alert)),
        "kind": alert.kind,
        "kind_label": _kind_label(alert, lang),
        "cause": alert.cause,
        "previous_severity": alert.previous_severity,
        "from_authority_id": alert.from_authority_id,
        "from_authority_name": alert.from_authority_name,
        "category": alert.category,
        "category_label": _label(CATEGORY_LABELS, lang, alert.category, alert.category_label),
        "severity": alert.severity,
        "publicity": alert.publicity,
        "ack_due": alert.ack_due.isoformat() if alert.ack_due else None,
        "ack_due_local": local_time(alert.ack_due, LOCAL_FORMAT),
        "ack_due_short": local_time(alert.ack_due, "%H:%M %d/%m"),
        "ack_overdue": _passed(alert.ack_due, now),
        "rulepack_version": alert.rulepack_version,
        "link": link,
        # About a milestone's deadline rather than acknowledging: templates say which step.
        "milestone": alert.milestone,
        "milestone_label": _milestone_label(alert, lang),
        "milestone_name": _milestone_name(alert),
        "milestone_due": alert.milestone_due.isoformat() if alert.milestone_due else None,
        "milestone_due_local": local_time(alert.milestone_due, LOCAL_FORMAT),
        "milestone_due_short": local_time(alert.milestone_due, "%H:%M %d/%m"),
        "milestone_overdue": _passed(alert.milestone_due, now),
        "about_authority_id": alert.about_authority_id,
        "about_reason": alert.about_reason,
        # The tier that missed, for the tier up: "Cấp xã chưa xác nhận", not "Cấp dưới". None in
        # alerts written before it was added: templates then say "the tier below".
        "about_tier": alert.about_tier,
        "about_tier_label": (_label(TIER_LABELS, lang, alert.about_tier, alert.about_tier_label)
                             if alert.about_tier else None),
        # A breach to the authority that missed: who else was told. None when the alert does
        # not say (written before it did): templates then claim nothing.
        "told_supervisors": alert.told_supervisors,
        "told_tier_label": (_label(TIER_LABELS, lang, alert.told_tier, alert.told_tier_label)
                            if alert.told_tier else None),
        # The directory's names; None in events written before names were added.
        "authority_name": alert.authority_name,
        "about_authority_name": alert.about_authority_name,
        "setting": alert.setting,
        "setting_label": _label(SETTING_LABELS, lang, alert.setting) if alert.setting else None,
    }


def webhook_body(ctx: dict[str, Any]) -> dict[str, Any]:
    """The webhook JSON: built in code, codes only, stable field names (version 1)."""
    keys = ("alert_id", "case_id", "authority_id", "tier", "agency", "agency_label", "role",
            "kind", "category", "category_label", "severity", "publicity", "ack_due", "ack_due_local",
            "rulepack_version", "link", "lang", "milestone", "milestone_label", "milestone_name",
            "milestone_due", "about_authority_id", "about_reason", "about_tier", "setting",
            "authority_name", "about_authority_name", "cause", "previous_severity",
            "from_authority_id", "from_authority_name")
    body = {"type": "beacon.alert", "version": 1, **{k: ctx[k] for k in keys}}
    if ctx["ack_due"]:  # version 1's format, which a receiver parses: never "24:00"
        body["ack_due_local"] = local_time(datetime.fromisoformat(ctx["ack_due"]),
                                           LOCAL_FORMAT, for_people=False)
    return body


def fold_to_gsm7(text: str) -> str:
    """Vietnamese without diacritics (common SMS practice), so it fits the GSM-7 alphabet."""
    text = text.replace("đ", "d").replace("Đ", "D")
    folded = "".join(
        c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
    )
    return "".join(c if c in _GSM7_BASIC or c in _GSM7_EXT else "?" for c in folded)


def _who_missed(ctx: dict[str, Any]) -> str:
    """The authority an escalated or supervisor alert is about, by its tier as templates name it:
    the tier below for the tier up, a supervisor's own office of its unit (not one below)."""
    tier, vi = ctx["about_tier_label"], ctx["lang"] == "vi"
    if ctx["kind"] == "escalated":
        if tier:
            return f"Cấp {tier}" if vi else f"The {tier} level"
        return "Cấp dưới" if vi else "The tier below"
    if tier:
        return f"Cơ quan cấp {tier}" if vi else f"The {tier}-level authority"
    return "Cơ quan được giao" if vi else "The authority in charge"


def _fallback(ctx: dict[str, Any], channel: str, error: str) -> Message:
    """Plain built-in text: no template involved, so it cannot fail on one. The labels are
    built in code (build_context), so they cannot fail either; codes alone ("breach",
    "SEX_ABUSE") told a Vietnamese officer little."""
    due = ctx["milestone_due_short"] or ctx["ack_due_short"]
    # A deadline gone by (a breach, a miss, or a message sent late) is not told as to come.
    passed = ctx["milestone_overdue"] if ctx["milestone_due_short"] else ctx["ack_overdue"]
    late = (passed or ctx["kind"] == "breach" or ctx["about_reason"] == "milestone_missed"
            or (ctx["kind"] == "supervisor" and ctx["about_reason"] == "deadline_missed"))
    step = f" {ctx['milestone_label']}" if ctx["milestone"] else ""
    what = f"{ctx['severity']} {ctx['kind_label']}{step}"
    # A deadline another authority missed (a supervisor's, or a step's) says who, as the
    # templates do: "Cấp xã quá hạn từ ...", not a bare "Quá hạn từ ..." that reads as ours.
    who = _who_missed(ctx) if late and (
        ctx["kind"] == "supervisor" or ctx["about_reason"] == "milestone_missed") else None
    if ctx["lang"] == "vi":
        subject = f"[Beacon] {ctx['severity']} vụ {ctx['case_id']}"
        when = f"{who} quá hạn từ" if who else ("Quá hạn từ" if late else "Hạn")
        text = (f"Beacon {what}: vụ {ctx['case_id']} ({ctx['category_label']})."
                + (f" {when} {due}." if due else "") + f" {ctx['link']}")
    else:
        subject = f"[Beacon] {ctx['severity']} case {ctx['case_id']}"
        when = f"{who}: overdue since" if who else ("Overdue since" if late else "Due")
        text = (f"Beacon {what}: case {ctx['case_id']} ({ctx['category_label']})."
                + (f" {when} {due}." if due else "") + f" {ctx['link']}")
    if channel == "sms" and sms_segments(text)[1] > SMS_MAX_SEGMENTS:
        text = fold_to_gsm7(text)
    return Message(subject=subject, text=text, body=webhook_body(ctx), lang=ctx["lang"],
                   render_error=error)


class Renderer:
    def __init__(self, templates_dir: Path | str = TEMPLATES_DIR,
                 sms_max_segments: int = SMS_MAX_SEGMENTS):
        self.sms_max_segments = sms_max_segments
        self.env = SandboxedEnvironment(
            loader=FileSystemLoader(str(templates_dir)),
            undefined=StrictUndefined,
            autoescape=False,  # plain text and SMS, never HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )

    def _tpl(self, lang: str, name: str, ctx: dict[str, Any]) -> str:
        return self.env.get_template(f"{lang}/{name}.j2").render(ctx).strip()

    def _fit_sms(self, candidates: Sequence[str]) -> str:
        """The first candidate within the segment budget, as written or folded to GSM-7: the
        whole message unaccented says more than a shorter one with diacritics."""
        tries = [t for c in candidates for t in (c, fold_to_gsm7(c))]
        for text in tries:
            if sms_segments(text)[1] <= self.sms_max_segments:
                return text
        return min(tries, key=lambda t: sms_segments(t)[1])  # too long everywhere: send the least

    def render(self, alert: AlertRequested, channel: str, lang: str, link: str,
               now: datetime | None = None) -> Message:
        """`now`: when it is sent (build_context)."""
        if channel not in ("webhook", "email", "sms"):
            raise ValueError(f"unknown channel {channel!r}")
        ctx = build_context(alert, lang, link, now)
        lang = ctx["lang"]
        body = webhook_body(ctx)
        template = ""
        try:
            if channel == "webhook":  # no template: a stable machine-readable body
                return Message(subject="", text="", body=body, lang=lang)
            if channel == "email":
                template = "email_subject"
                subject = " ".join(self._tpl(lang, template, ctx).split())  # one header line
                template = "email_body"
                return Message(subject=subject, text=self._tpl(lang, template, ctx) + "\n",
                               body=body, lang=lang)
            template = "sms"
            full = self._tpl(lang, template, ctx)
            template = "sms_short"
            short = self._tpl(lang, template, ctx)
            return Message(subject="", text=self._fit_sms([full, short]), body=body, lang=lang)
        except Exception as exc:  # noqa: BLE001 - any template fault: never drop the alert
            error = f"{type(exc).__name__} in {lang}/{template}.j2"
            log.warning("notifier.render_failed", error=error, channel=channel,
                        alert_id=alert.alert_id)
            return _fallback(ctx, channel, error)

    def render_bundle(self, items: Sequence[tuple[AlertRequested, str]], channel: str,
                      lang: str, now: datetime | None = None) -> Message:
        """One message for several reminders to one recipient: (alert, link) pairs."""
        if not items:
            raise ValueError("nothing to bundle")
        if channel not in ("webhook", "email", "sms"):
            raise ValueError(f"unknown channel {channel!r}")
        ctxs = [build_context(alert, lang, link, now) for alert, link in items]
        lang = ctxs[0]["lang"]
        body = {"type": "beacon.alert.bundle", "version": 1,
                "items": [webhook_body(c) for c in ctxs]}
        # The deadline the officer must meet first: each reminder's is its milestone's, when it
        # is about one, else its acknowledgement's.
        dues = [a.milestone_due if a.milestone else a.ack_due for a, _ in items]
        first = min((d for d in dues if d is not None), default=None)
        ctx = {"items": ctxs, "severities": sorted({c["severity"] for c in ctxs}), "lang": lang,
               "cases": len({c["case_id"] for c in ctxs}),  # a case's 50% and milestone reminders
               "first_due_local": local_time(first, LOCAL_FORMAT),
               "first_due_short": local_time(first, "%H:%M %d/%m"),
               "first_overdue": _passed(first, now)}
        template = ""
        try:
            if channel == "webhook":
                return Message(subject="", text="", body=body, lang=lang)
            if channel == "email":
                template = "bundle_subject"
                subject = " ".join(self._tpl(lang, template, ctx).split())
                template = "bundle_body"
                return Message(subject=subject, text=self._tpl(lang, template, ctx) + "\n",
                               body=body, lang=lang)
            template = "bundle_sms"  # at most policy.SMS_BUNDLE_MAX reminders: two segments
            # With a long base URL, the links leave no room for the first deadline: the
            # bundle goes without it rather than in three segments (each link's page has it).
            return Message(subject="", text=self._fit_sms([
                self._tpl(lang, template, ctx),
                self._tpl(lang, template, {**ctx, "first_due_short": None})]), body=body, lang=lang)
        except Exception as exc:  # noqa: BLE001 - same: the bundle still goes
            error = f"{type(exc).__name__} in {lang}/{template}.j2"
            log.warning("notifier.render_failed", error=error, channel=channel)
            if channel == "sms":  # the shortest form that says it all: two segments
                due = ctx["first_due_short"]
                if ctx["first_overdue"]:
                    word = "qua han tu" if lang == "vi" else "overdue since"
                else:
                    word = "han som nhat" if lang == "vi" else "earliest due"
                first = f", {word} {due}" if due else ""
                text = self._fit_sms([f"Beacon {len(ctxs)}{first}:" + "".join(
                    f" {c['severity']} {c['category']} {c['link']}" for c in ctxs)])
            else:
                text = "\n".join(_fallback(c, channel, error).text for c in ctxs)
            return Message(subject=f"[Beacon] {len(ctxs)}", text=text, body=body, lang=lang,
                           render_error=error)


_default = Renderer()


def render(alert: AlertRequested, channel: str, lang: str, link: str,
           now: datetime | None = None) -> Message:
    return _default.render(alert, channel, lang, link, now)


def render_bundle(items: Sequence[tuple[AlertRequested, str]], channel: str, lang: str,
                  now: datetime | None = None) -> Message:
    return _default.render_bundle(items, channel, lang, now)
