import itertools
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.events import AlertRequested, Contact, Label
from services.escalation.rulepack import SHIPPED, load_pack
from services.common.links import sign_link
from services.notifier.render import (
    CATEGORY_LABELS,
    TEMPLATES_DIR,
    TIER_LABELS,
    Renderer,
    build_context,
    fold_to_gsm7,
    render,
    render_bundle,
    sms_segments,
)

DUE = datetime(2026, 11, 29, 2, 45, tzinfo=UTC)  # 09:45 in Viet Nam
# Sent after every deadline these tests give (DUE, and MILESTONE's 18:45): told as overdue.
LATE = DUE + timedelta(hours=12)
CASE = "C-01KB2X7Q9M3N8P4R5S6T7V8W9XAB"  # ULID-sized, near the longest case code
CANARY_PHONE = "0987654321"
CATEGORIES = list(CATEGORY_LABELS["vi"])
KINDS = ["alert", "inform", "reminder", "breach", "supervisor", "escalated"]  # with a deadline
ALL_KINDS = [*KINDS, "closed"]


def alert(**kw) -> AlertRequested:
    data = {
        "alert_id": "al-1", "case_id": CASE, "authority_id": "vn-01-00004-child_protection",
        "tier": "commune", "agency": "child_protection", "role": "act", "kind": "alert",
        "category": "SEX_ABUSE", "severity": "P1", "publicity": "PA0", "ack_due": DUE,
        "contacts": [Contact(channel="sms", address=CANARY_PHONE)], "rulepack_version": "default@1",
    }
    data.update(kw)
    return AlertRequested(**data)


def link(a: AlertRequested) -> str:
    return sign_link("https://beacon.example.gov.vn", a.case_id, "view", a.authority_id,
                     DUE + timedelta(days=7), "secret")


def all_text(m) -> str:
    return m.subject + "\n" + m.text + "\n" + repr(m.body)


def test_the_alert_contract_refuses_identity_fields():
    with pytest.raises(ValidationError):
        alert(child_name="Canaryname")
    with pytest.raises(ValidationError):
        alert(narrative="Canarytext")


def test_templates_see_an_allow_list_of_codes_only():
    ctx = build_context(alert(), "vi", "L")
    assert set(ctx) == {
        "lang", "alert_id", "case_id", "authority_id", "tier", "tier_label", "agency",
        "agency_label", "role", "role_label", "kind", "kind_label", "category", "category_label",
        "severity", "publicity", "ack_due", "ack_due_local", "ack_due_short", "ack_overdue",
        "rulepack_version", "link", "milestone", "milestone_label", "milestone_name",
        "milestone_due", "milestone_due_local", "milestone_due_short", "milestone_overdue",
        "about_authority_id", "about_reason",
        "about_tier", "about_tier_label", "setting", "setting_label",
        "authority_name", "about_authority_name",  # an authority's, from the directory
        "cause", "previous_severity", "from_authority_id", "from_authority_name",
        "told_supervisors", "told_tier_label",  # a breach: who else escalation told
    }
    assert "contacts" not in ctx


@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("channel", ["webhook", "email", "sms"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_no_contact_or_identity_in_any_message(lang, channel, kind):
    a = alert(kind=kind)
    m = render(a, channel, lang, link(a))
    assert m.render_error is None
    assert CANARY_PHONE not in all_text(m)
    assert a.case_id in all_text(m)


@given(
    category=st.sampled_from(CATEGORIES + ["NEW_CODE"]),
    severity=st.sampled_from(["P1", "P2", "P3", "P4"]),
    kind=st.sampled_from(ALL_KINDS),
    lang=st.sampled_from(["vi", "en", "fr"]),
    channel=st.sampled_from(["webhook", "email", "sms"]),
    canary=st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=12, max_size=20),
)
@settings(max_examples=150, deadline=None)
def test_only_alert_values_reach_messages(category, severity, kind, lang, channel, canary):
    # The contact address (the only free text an alert holds) never shows up in a message.
    a = alert(category=category, severity=severity, kind=kind,
              contacts=[Contact(channel="email", address=f"{canary}@example.org")])
    m = render(a, channel, lang, link(a))
    assert canary not in all_text(m)
    assert m.render_error is None


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("now", [None, LATE])
def test_p1_sms_in_vietnamese_fits_two_segments(category, kind, now):
    a = alert(category=category, kind=kind)
    m = render(a, "sms", "vi", link(a), now)
    encoding, n = sms_segments(m.text)
    assert n <= 2, (encoding, len(m.text), m.text)
    assert a.case_id in m.text and "P1" in m.text
    assert "09:45 29/11" in m.text


SHIPPED_CATEGORIES = [(name, code, Label(vi=c.label, en=c.name))
                      for name in SHIPPED for code, c in load_pack(name).categories.items()]


@pytest.mark.parametrize("pack,category,label", SHIPPED_CATEGORIES)
@pytest.mark.parametrize("lang", ["vi", "en"])
def test_p1_sms_with_a_shipped_packs_names_fits_two_segments(pack, category, label, lang):
    a = alert(category=category, category_label=label)
    m = render(a, "sms", lang, link(a))
    assert sms_segments(m.text)[1] <= 2, m.text
    assert a.case_id in m.text and m.render_error is None


def test_messages_call_a_category_and_an_agency_what_the_pack_calls_them():
    dolisa = Label(vi="Lao động - Thương binh và Xã hội", en="Labour, Invalids and Social Affairs")
    a = alert(category="DOMESTIC", category_label=Label(vi="Bạo lực gia đình", en="Domestic abuse"),
              agency_label=dolisa)
    vi, en = render(a, "email", "vi", link(a)), render(a, "email", "en", link(a))
    assert "Bạo lực gia đình" in vi.subject and dolisa.vi in vi.text
    assert "Domestic abuse" in en.subject and dolisa.en in en.text
    assert render(a, "webhook", "en", link(a)).body["category_label"] == "Domestic abuse"
    # A pack without English names: ours for a shipped code, else the pack's Vietnamese.
    shipped = alert(category="PHYS_VIOLENCE", category_label=Label(vi="Bạo lực thân thể"))
    assert "Physical violence" in render(shipped, "email", "en", link(shipped)).subject
    added = alert(category="DOMESTIC", category_label=Label(vi="Bạo lực gia đình"))
    assert "Bạo lực gia đình" in render(added, "email", "en", link(added)).subject


def test_vietnamese_sms_keeps_diacritics_when_the_whole_message_fits():
    a = alert(category="CHILD_MARRIAGE", case_id="C-1")
    m = render(a, "sms", "vi", "https://b.vn/a/x")
    assert sms_segments(m.text)[0] == "ucs2"
    assert "Tảo hôn" in m.text and "Cảnh báo mới" in m.text


@pytest.mark.parametrize("kind,says", [("alert", "Canh bao moi"), ("reminder", "Nhac lai"),
                                       ("escalated", "Chuyen len quy co quan"),
                                       ("inform", "Thong bao")])
def test_a_vietnamese_sms_says_what_kind_of_message_it_is(kind, says):
    # The short form with diacritics used to win, and said only "P1 <category> hạn <time>".
    a = alert(category="EXPLOITATION", kind=kind)
    m = render(a, "sms", "vi", link(a))
    assert says in m.text and sms_segments(m.text)[1] <= 2


@pytest.mark.parametrize("lang,label", [("vi", "Bạo lực thể chất"), ("en", "Physical violence")])
def test_email_has_case_label_severity_tier_deadline_and_link(lang, label):
    a = alert(category="PHYS_VIOLENCE", severity="P2")
    m = render(a, "email", lang, link(a))
    assert m.lang == lang
    assert label in m.subject and label in m.text
    assert CASE in m.subject and CASE in m.text
    assert "P2" in m.subject
    assert "09:45 29/11/2026" in m.text  # Asia/Ho_Chi_Minh
    assert link(a) in m.text
    assert ("xã" if lang == "vi" else "commune") in m.text
    assert "\n" not in m.subject
    # No sign-in is behind the link: the message says what the link does and where the case is.
    assert "Sign in" not in m.text and "đăng nhập" not in m.text


def test_webhook_body_is_codes_built_in_code():
    a = alert()
    m = render(a, "webhook", "en", link(a))
    assert m.body["type"] == "beacon.alert" and m.body["version"] == 1
    assert m.body["case_id"] == CASE and m.body["category"] == "SEX_ABUSE"
    assert m.body["ack_due"] == DUE.isoformat()
    assert m.body["link"] == link(a)


@pytest.mark.parametrize(("lang", "words"), [("vi", "Nơi xảy ra: gia đình"),
                                             ("en", "Where: home")])
def test_messages_say_where_it_happened(lang, words):
    """Two P1 cases of one category in a commune (a kindergarten's, a child's at home) read
    alike: the setting tells them apart."""
    a = alert(setting="home")
    assert render(a, "webhook", lang, link(a)).body["setting"] == "home"
    assert words in render(a, "email", lang, link(a)).text
    before = alert()  # an event written before alerts carried it
    assert render(before, "webhook", lang, link(before)).body["setting"] is None
    assert words.split(":")[0] not in render(before, "email", lang, link(before)).text


def test_unknown_codes_show_as_themselves_and_unknown_lang_is_vietnamese():
    a = alert(category="NEW_CODE", tier="region", agency="fire")
    m = render(a, "email", "fr", link(a))
    assert m.lang == "vi"
    assert "NEW_CODE" in m.subject and "region" in m.text and "fire" in m.text


def test_inform_without_deadline_has_no_deadline_line():
    a = alert(role="inform", kind="inform", ack_due=None)
    m = render(a, "email", "en", link(a))
    assert "Acknowledge receipt by" not in m.text
    assert render(a, "sms", "vi", link(a)).render_error is None


def test_unknown_channel_is_a_programming_error():
    with pytest.raises(ValueError):
        render(alert(), "fax", "vi", "L")


def test_sms_segment_counting():
    assert sms_segments("a" * 160) == ("gsm7", 1)
    assert sms_segments("a" * 161) == ("gsm7", 2)
    assert sms_segments("a" * 306) == ("gsm7", 2)
    assert sms_segments("€" * 80) == ("gsm7", 1)  # extension characters cost two septets
    assert sms_segments("€" * 81) == ("gsm7", 2)
    assert sms_segments("ạ" * 70) == ("ucs2", 1)
    assert sms_segments("ạ" * 71) == ("ucs2", 2)
    assert sms_segments("ạ" * 134) == ("ucs2", 2)
    assert sms_segments("ạ" * 135) == ("ucs2", 3)


def test_folding_gives_gsm7():
    assert fold_to_gsm7("Xâm hại tình dục, Đà Nẵng") == "Xam hai tinh duc, Da Nang"
    assert sms_segments(fold_to_gsm7("Bóc lột, lao động trái phép"))[0] == "gsm7"


@pytest.fixture
def broken_dir(tmp_path):
    shutil.copytree(TEMPLATES_DIR, tmp_path / "t")
    return tmp_path / "t"


@pytest.mark.parametrize("channel,name,content", [
    ("sms", "sms.j2", "{{ severity "),  # syntax error
    ("email", "email_body.j2", "{{ child_name }}"),  # undefined: StrictUndefined refuses
    ("email", "email_subject.j2", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),  # sandbox
    ("sms", "sms_short.j2", "{{ link.__class__.__init__.__globals__ }}"),
])
def test_a_broken_template_falls_back_and_reports(broken_dir, channel, name, content):
    (broken_dir / "vi" / name).write_text(content)
    a = alert()
    m = Renderer(broken_dir).render(a, channel, "vi", link(a))
    assert m.render_error and name in m.render_error
    assert CASE in m.text and link(a) in m.text and "P1" in m.text
    if channel == "sms":
        assert sms_segments(m.text)[1] <= 2
    assert CANARY_PHONE not in all_text(m)


def reminders(n: int) -> list[tuple[AlertRequested, str]]:
    items = []
    for i in range(n):
        a = alert(alert_id=f"al-{i}", case_id=f"{CASE[:-1]}{i}", severity="P3", kind="reminder")
        items.append((a, link(a)))
    return items


@pytest.mark.parametrize("channel,name", [
    ("sms", "bundle_sms.j2"), ("email", "bundle_body.j2"), ("email", "bundle_subject.j2")])
@pytest.mark.parametrize("content", [
    "{{ '{:d}'.format('x') }}",  # a ValueError, which once escaped the fallback
    "{{ no_such_field }}",
])
def test_a_broken_bundle_template_falls_back_and_reports(broken_dir, channel, name, content):
    (broken_dir / "vi" / name).write_text(content)
    items = reminders(2)
    m = Renderer(broken_dir).render_bundle(items, channel, "vi")
    assert m.render_error and name in m.render_error
    for a, lnk in items:
        assert a.case_id in m.text and lnk in m.text
    if channel == "sms":
        assert sms_segments(m.text)[1] <= 2


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_an_sms_bundle_of_two_reminders_fits_two_segments(lang):
    m = render_bundle(reminders(2), "sms", lang)
    assert sms_segments(m.text)[1] <= 2, m.text
    assert m.text.count("https://") == 2


def test_a_missing_template_falls_back(tmp_path):
    a = alert()
    m = Renderer(tmp_path).render(a, "email", "en", link(a))
    assert m.render_error and "TemplateNotFound" in m.render_error
    assert CASE in m.text and m.subject


@pytest.mark.parametrize("channel", ["webhook", "email", "sms"])
def test_bundle_lists_every_case(channel):
    items = []
    for i, cat in enumerate(["BULLYING", "HAZARD", "NEGLECT"]):
        a = alert(alert_id=f"al-{i}", case_id=f"C-00000{i}", category=cat, severity="P3",
                  kind="reminder")
        items.append((a, link(a)))
    m = render_bundle(items, channel, "vi")
    text = all_text(m)
    for a, lnk in items:
        assert a.case_id in text and lnk in text
    assert CANARY_PHONE not in text


MILESTONE = dict(kind="reminder", milestone="emergency_measure",
                 milestone_label="Biện pháp bảo vệ khẩn cấp",
                 milestone_name="Emergency protection measure",
                 milestone_due=DUE + timedelta(hours=9))  # 18:45 in Viet Nam


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("kind", ["reminder", "breach", "supervisor", "escalated"])
@pytest.mark.parametrize("now", [None, LATE])
def test_p1_milestone_sms_names_the_step_and_its_deadline_in_two_segments(category, kind, now):
    a = alert(category=category, **{**MILESTONE, "kind": kind})
    m = render(a, "sms", "vi", link(a), now)
    assert sms_segments(m.text)[1] <= 2, m.text
    assert "18:45 29/11" in m.text and "09:45" not in m.text  # not the acknowledgement's
    assert "Bien phap bao ve khan cap" in fold_to_gsm7(m.text)  # the pack's label


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_milestone_email_and_webhook_say_which_step_is_due(lang):
    a = alert(**MILESTONE)
    email = render(a, "email", lang, link(a))
    assert "emergency_measure" in email.subject + email.text or "Biện pháp" in email.subject
    assert "18:45 29/11/2026" in email.text and "09:45" not in email.text
    assert "Hạn xác nhận" not in email.text and "Acknowledge receipt by" not in email.text
    body = render(a, "webhook", lang, link(a)).body
    assert body["milestone"] == "emergency_measure"
    assert body["milestone_due"] == (DUE + timedelta(hours=9)).isoformat()
    assert render(alert(), "webhook", lang, link(a)).body["milestone"] is None


def test_a_bundle_of_milestone_reminders_names_each_step():
    items = [(alert(severity="P3", case_id=f"C-{n}0000000", **MILESTONE), "L") for n in range(2)]
    m = render_bundle(items, "email", "en")
    assert m.text.count("Emergency protection measure due 18:45 29/11/2026") == 2


@pytest.mark.parametrize("lang,closed,asks,urgent", [
    ("en", "closed the case", "View the case and acknowledge", "URGENT"),
    ("vi", "đã đóng vụ việc", "Xem vụ việc và xác nhận", "KHẨN")])
def test_news_of_a_close_says_so_and_asks_for_nothing(lang, closed, asks, urgent):
    news = alert(kind="closed", role="inform", ack_due=None)
    email = render(news, "email", lang, link(news))
    assert closed in email.text and asks not in email.text and urgent not in email.subject
    assert urgent in render(alert(), "email", lang, link(news)).subject  # an alert still is
    sms = render(news, "sms", lang, link(news))
    assert ("Case closed" if lang == "en" else "da dong") in fold_to_gsm7(sms.text)
    assert sms_segments(sms.text)[1] <= 2


@pytest.mark.parametrize("lang,missed,no_ack", [
    ("vi", "Cơ quan chưa xác nhận đúng hạn: commune:4:child_protection", "Hạn xác nhận đã tiếp nhận:"),
    ("en", "Not acknowledged in time by: commune:4:child_protection", "Acknowledge receipt by:")])
def test_a_supervisor_is_told_who_missed_the_deadline_and_asked_for_nothing(lang, missed, no_ack):
    # It was "handle and acknowledge by 18:44", the deadline already missed, naming nobody.
    a = alert(kind="supervisor", role="inform", agency="people_committee",
              authority_id="commune:4:people_committee",
              about_authority_id="commune:4:child_protection")
    email = render(a, "email", lang, link(a))
    assert missed in email.text and no_ack not in email.text
    assert "people_committee" not in email.text.replace("commune:4:people_committee", "")
    assert "09:45 29/11/2026" in email.text  # the deadline that passed (DUE, in Viet Nam time)
    assert render(a, "webhook", lang, link(a)).body["about_authority_id"] == a.about_authority_id
    sms = render(a, "sms", lang, link(a))
    assert sms_segments(sms.text)[1] <= 2
    assert "don doc" in fold_to_gsm7(sms.text) or "follow up" in sms.text


@pytest.mark.parametrize("lang,to,missed", [
    # On a line of its own: the line after it was glued to it (the template's block ate the
    # newline), found by the wording review.
    ("vi", "Gửi tới: UBND Phường Ba Đình (Ủy ban nhân dân, cấp xã, mã "
     "commune:4:people_committee)\n", "chưa xác nhận đúng hạn: Bảo vệ trẻ em – "
     "Phường Ba Đình (commune:4:child_protection)"),
    ("en", "To: UBND Phường Ba Đình (People's Committee, commune level, "
     "commune:4:people_committee)\n", "Not acknowledged in time by: Bảo vệ trẻ em – Phường Ba "
     "Đình (commune:4:child_protection)")])
def test_authorities_are_named_as_the_directory_names_them(lang, to, missed):
    """A province officer told of a silent commune could not tell which commune from its id."""
    a = alert(kind="supervisor", role="inform", agency="people_committee",
              authority_id="commune:4:people_committee", authority_name="UBND Phường Ba Đình",
              about_authority_id="commune:4:child_protection",
              about_authority_name="Bảo vệ trẻ em – Phường Ba Đình")
    email = render(a, "email", lang, link(a)).text
    assert to in email and missed in email
    body = render(a, "webhook", lang, link(a)).body
    assert (body["authority_name"], body["about_authority_name"]) == (
        "UBND Phường Ba Đình", "Bảo vệ trẻ em – Phường Ba Đình")


def test_an_informed_authority_is_not_asked_to_acknowledge():
    for lang, ask in (("vi", "và xác nhận đã tiếp nhận"), ("en", "and acknowledge receipt")):
        a = alert(kind="inform", role="inform", ack_due=None)
        assert ask not in render(a, "email", lang, link(a)).text
        assert ask in render(alert(), "email", lang, link(a)).text


@pytest.mark.parametrize("lang,overdue,ask", [
    ("vi", "Đã quá hạn xác nhận lúc 09:45 29/11/2026", "Hạn xác nhận đã tiếp nhận:"),
    ("en", "Your deadline passed at: 09:45 29/11/2026", "Acknowledge receipt by:")])
def test_a_breach_tells_the_authority_its_deadline_passed(lang, overdue, ask):
    # Not "acknowledge by" a time already gone: it is late, and asked to acknowledge now.
    a = alert(kind="breach")
    email = render(a, "email", lang, link(a))
    assert overdue in email.text and ask not in email.text
    sms = render(a, "sms", lang, link(a))
    assert sms_segments(sms.text)[1] <= 2 and "09:45 29/11" in sms.text
    assert ("qua han" in fold_to_gsm7(sms.text)) if lang == "vi" else ("Overdue" in sms.text)


@pytest.mark.parametrize("lang,says", [("vi", "2 vụ việc cần xử lý (3 lời nhắc)"),
                                       ("en", "2 cases that need action (3 reminders)")])
def test_a_bundle_counts_cases_not_reminders(lang, says):
    # A case's acknowledgement and milestone reminders are two items, one case.
    items = []
    for i, case in enumerate(["C-000001", "C-000001", "C-000002"]):
        a = alert(alert_id=f"al-{i}", case_id=case, severity="P3", kind="reminder")
        items.append((a, link(a)))
    assert says in render_bundle(items, "email", lang).text
    sms = render_bundle(items, "sms", lang).text
    assert sms.count("https://") == 2 and sms.startswith("Beacon: 2 ")


@pytest.mark.parametrize("lang,unreachable,missed", [
    ("vi", "Không liên lạc được với cơ quan: commune:4:child_protection", "Hạn xác nhận đã qua"),
    ("en", "Could not be reached: commune:4:child_protection", "now passed")])
def test_a_supervisor_told_of_an_unreachable_authority_is_not_told_it_missed_its_deadline(
        lang, unreachable, missed):
    # Every contact failing escalates before the deadline: it has not passed yet.
    a = alert(kind="supervisor", role="inform", agency="people_committee",
              authority_id="commune:4:people_committee",
              about_authority_id="commune:4:child_protection", about_reason="unreachable")
    email = render(a, "email", lang, link(a))
    assert unreachable in email.text and missed not in email.text
    assert render(a, "webhook", lang, link(a)).body["about_reason"] == "unreachable"
    sms = render(a, "sms", lang, link(a))
    assert sms_segments(sms.text)[1] <= 2
    assert "lien he" in fold_to_gsm7(sms.text) or "cannot be reached" in sms.text


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_an_sms_bundle_names_its_categories_within_two_segments(lang):
    # The two longest labels: "Bóc lột, lao động trái phép", "Mua bán, bắt cóc trẻ em".
    items = []
    for i, category in enumerate(["EXPLOITATION", "TRAFFICKING"]):
        a = alert(alert_id=f"al-{i}", case_id=f"{CASE[:-1]}{i}", category=category,
                  severity="P3", kind="reminder")
        items.append((a, link(a)))
    sms = render_bundle(items, "sms", lang).text
    assert sms_segments(sms)[1] <= 2, sms
    assert ("Boc lot" in fold_to_gsm7(sms)) if lang == "vi" else ("Exploitation" in sms)


CAUSES = [("raised", {"previous_severity": "P2"}, "Nâng mức độ từ P2",
           "Severity raised from P2", "Mức độ đã nâng từ P2 lên P1"),
          ("sooner", {}, "Hạn xác nhận sớm hơn", "Earlier deadline", "được rút ngắn"),
          ("must_act", {}, "Nay phải xử lý", "Now for action", "nay phải xử lý"),
          ("again", {}, "Cảnh báo lại", "Alerting again", "chỉ để biết"),
          ("reopened", {}, "Mở lại vụ việc", "Case reopened", "mở lại"),
          ("transferred", {"from_authority_id": "commune:8:child_protection",
                           "from_authority_name": "Bảo vệ trẻ em – Phường Tây Hồ"},
           "Được chuyển đến", "Transferred to you", "Chuyển đến từ: Bảo vệ trẻ em – Phường Tây Hồ")]


@pytest.mark.parametrize("cause,extra,vi,en,vi_line", CAUSES)
def test_an_alert_that_comes_again_says_why(cause, extra, vi, en, vi_line):
    """A raise, a transfer or a reopening reached the officer as one more "new alert"."""
    a = alert(cause=cause, **extra)
    email = render(a, "email", "vi", link(a))
    assert vi in email.subject and vi_line in email.text and "Cảnh báo mới" not in email.subject
    assert en in render(a, "email", "en", link(a)).subject
    sms = render(a, "sms", "vi", link(a))
    assert sms_segments(sms.text)[1] <= 2 and "09:45 29/11" in sms.text
    assert fold_to_gsm7(vi) in fold_to_gsm7(sms.text) and "Canh bao moi" not in sms.text
    body = render(a, "webhook", "vi", link(a)).body
    assert body["cause"] == cause and body["from_authority_id"] == extra.get("from_authority_id")


@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("cause,extra", [(c[0], c[1]) for c in CAUSES])
@pytest.mark.parametrize("now", [None, LATE])
def test_a_p1_sms_that_says_why_still_fits_two_segments(category, cause, extra, lang, now):
    a = alert(category=category, cause=cause, **extra)
    m = render(a, "sms", lang, link(a), now)
    assert sms_segments(m.text)[1] <= 2, m.text
    assert a.case_id in m.text and "09:45 29/11" in m.text


def test_a_deadline_at_midnight_reads_as_24_00_of_the_day_before():
    """Working days from a day off end at midnight: "hạn 00:00 24/02" was read as the end of
    the 24th, a day after the deadline."""
    midnight = datetime(2026, 2, 23, 17, 0, tzinfo=UTC)  # 00:00 on 24/02 in Viet Nam
    a = alert(ack_due=midnight, severity="P3", category="NEGLECT")
    sms = render(a, "sms", "vi", link(a)).text
    assert "24:00 23/02" in sms and "00:00" not in sms
    assert "24:00 23/02/2026" in render(a, "email", "en", link(a)).text
    # The webhook's field keeps version 1's format, which receivers parse (strptime refuses 24).
    assert render(a, "webhook", "vi", link(a)).body["ack_due_local"] == "00:00 24/02/2026"
    assert render(alert(), "email", "vi", link(a)).text.count("09:45 29/11/2026") >= 1



@pytest.mark.parametrize("kind,role,vi,en", [
    ("supervisor", "inform", "Cơ quan được giao đã quá hạn", "The authority in charge missed"),
    ("escalated", "act", "Cấp dưới đã quá hạn", "The tier below missed")])
def test_a_missed_milestone_is_told_as_missed_and_by_whom(kind, role, vi, en):
    """The province was told "Mốc phải hoàn thành ... Hạn: 09:45", a deadline that read as
    still to come, and not who had missed the emergency measure (found by the wording review)."""
    a = alert(**{**MILESTONE, "kind": kind, "role": role, "about_reason": "milestone_missed",
                 "about_authority_id": "commune:4:child_protection",
                 "about_authority_name": "Bảo vệ trẻ em – Phường Ba Đình"})
    email = render(a, "email", "vi", link(a)).text
    assert vi + ": Bảo vệ trẻ em – Phường Ba Đình" in email and "Mốc phải hoàn thành" not in email
    assert "hạn đã qua: " in email
    assert en in render(a, "email", "en", link(a)).text
    for lang in ("vi", "en"):
        sms = render(a, "sms", lang, link(a)).text
        assert sms_segments(sms)[1] <= 2
        assert fold_to_gsm7(vi if lang == "vi" else en) in fold_to_gsm7(sms)



def test_the_ask_is_to_acknowledge_receipt_not_to_confirm_the_report():
    """"Xác nhận trước 09:45" alone reads as "confirm (verify) the report by 09:45": an officer
    may wait to check the facts, which is what the 15-minute deadline must not wait for."""
    a = alert()
    assert "Xac nhan da tiep nhan truoc 09:45 29/11" in fold_to_gsm7(render(a, "sms", "vi", link(a)).text)
    assert "Acknowledge receipt by 09:45 29/11" in render(a, "sms", "en", link(a)).text
    assert "Hạn xác nhận đã tiếp nhận: 09:45 29/11/2026" in render(a, "email", "vi", link(a)).text



def test_a_p1_sms_says_it_is_urgent_and_an_informed_one_that_nothing_is_asked():
    """"Beacon P1 ..." meant nothing to an officer not trained on the codes; an SMS "for
    information" did not say that no answer was expected (found by the wording review)."""
    a = alert()
    assert fold_to_gsm7(render(a, "sms", "vi", link(a)).text).startswith("KHAN CAP - Beacon P1")
    assert render(a, "sms", "en", link(a)).text.startswith("URGENT - Beacon P1")
    calm = alert(severity="P3", category="NEGLECT")
    assert render(calm, "sms", "vi", link(calm)).text.startswith("Beacon P3")
    told = alert(kind="inform", role="inform", ack_due=None)
    assert "De biet, khong can xac nhan" in fold_to_gsm7(render(told, "sms", "vi", link(told)).text)
    closed = alert(kind="closed", role="inform", ack_due=None)
    sms = render(closed, "sms", "en", link(closed)).text
    assert sms.startswith("Beacon P1") and "Nothing more to do" in sms


def test_the_built_in_message_names_the_category_and_the_kind():
    """The message sent when a template fails said "breach" and "SEX_ABUSE" to a Vietnamese
    officer; the labels are built in code, so they cannot fail as a template can."""
    from services.notifier.render import _fallback, build_context

    a = alert(kind="breach")
    text = _fallback(build_context(a, "vi", link(a)), "email", "x").text
    assert "Quá hạn xác nhận" in text and "Xâm hại tình dục" in text and "SEX_ABUSE" not in text



def test_a_milestone_reminder_says_what_to_do_and_that_acknowledging_is_not_it():
    a = alert(**MILESTONE)
    assert "Phai hoan thanh Bien phap bao ve khan cap truoc 18:45 29/11" in fold_to_gsm7(
        render(a, "sms", "vi", link(a)).text)
    email = render(a, "email", "vi", link(a)).text
    assert "Thời hạn: trước 18:45 29/11/2026" in email
    assert "Việc xác nhận đã tiếp nhận không thay cho việc này" in email


MISSED = dict(kind="supervisor", role="inform", about_reason="milestone_missed",
              about_authority_id="commune:4:child_protection")


def test_english_messages_name_a_step_not_its_code():
    """An English-speaking officer was told "Step emergency_measure due ...": the pack named
    the step in Vietnamese only (found by the wording review)."""
    a = alert(**MILESTONE)
    email = render(a, "email", "en", link(a))
    assert "(Emergency protection measure)" in email.subject and "emergency_measure" not in email.subject
    assert "Step due: Emergency protection measure (emergency_measure)" in email.text
    sms = render(a, "sms", "en", link(a)).text
    assert "Emergency protection measure to be done by 18:45 29/11 (VN time)" in sms
    assert "emergency_measure" not in sms.replace(link(a), "")
    short = Renderer()._tpl("en", "sms_short", build_context(a, "en", link(a)))  # a long URL's
    assert short.startswith("P1 Reminder: Sexual abuse Emergency protection measure due 18:45")
    missed = alert(**{**MILESTONE, **MISSED})
    assert "The authority in charge missed: Emergency protection measure, due 18:45 29/11" in \
        render(missed, "sms", "en", link(a)).text
    assert "Step missed: Emergency protection measure (emergency_measure)" in \
        render(missed, "email", "en", link(a)).text
    from services.notifier.render import _fallback

    built_in = _fallback(build_context(a, "en", link(a)), "sms", "x").text
    assert "Emergency protection measure" in built_in and "Biện pháp" not in built_in
    # Vietnamese messages keep the pack's label.
    assert "Phai hoan thanh Bien phap bao ve khan cap" in fold_to_gsm7(
        render(a, "sms", "vi", link(a)).text)
    assert "(Biện pháp bảo vệ khẩn cấp)" in render(a, "email", "vi", link(a)).subject


@pytest.mark.parametrize("name,label,en", [
    ("Home visit", "Thăm gia đình", "Home visit"),  # the pack's English name
    (None, "Thăm gia đình", "Thăm gia đình"),  # none: the pack's Vietnamese label
    (None, None, "home_visit")])  # neither (a step no longer in the pack): its code
def test_a_step_the_notifier_does_not_know_is_named_as_the_pack_names_it(name, label, en):
    a = alert(**{**MILESTONE, "milestone": "home_visit", "milestone_label": label,
                 "milestone_name": name})
    assert f"({en})" in render(a, "email", "en", link(a)).subject
    assert f"({label or 'home_visit'})" in render(a, "email", "vi", link(a)).subject


def test_an_alert_written_before_step_names_is_named_in_english_by_the_notifier():
    # An alert of the release before, or one under a pack without `name`: ours for a shipped step.
    data = alert(**MILESTONE).model_dump(mode="json", exclude={"milestone_name"})
    a = AlertRequested.model_validate(data)
    assert a.milestone_name is None
    assert "(Emergency protection measure)" in render(a, "email", "en", link(a)).subject
    assert "(Biện pháp bảo vệ khẩn cấp)" in render(a, "email", "vi", link(a)).subject


SHIPPED_STEPS = sorted({(m.code, m.label, m.name) for name in SHIPPED
                        for m in load_pack(name).milestones})


@pytest.mark.parametrize("step,label,name", SHIPPED_STEPS)
@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("kind", ["reminder", "breach", "supervisor", "escalated"])
@pytest.mark.parametrize("now", [None, LATE])
def test_a_p1_sms_naming_a_shipped_step_fits_two_segments(step, label, name, lang, kind, now):
    about = {"kind": kind} if kind in ("reminder", "breach") else {
        **MISSED, "kind": kind, "role": "act" if kind == "escalated" else "inform"}
    for category in CATEGORIES:
        a = alert(category=category, **{**MILESTONE, "milestone": step, "milestone_label": label,
                                        "milestone_name": name, **about})
        sms = render(a, "sms", lang, link(a), now).text
        assert sms_segments(sms)[1] <= 2, sms
        assert fold_to_gsm7(label if lang == "vi" else name) in fold_to_gsm7(sms)
        assert "18:45 29/11" in sms and a.case_id in sms


@pytest.mark.parametrize("step,label,name", SHIPPED_STEPS, ids=[s[0] for s in SHIPPED_STEPS])
@pytest.mark.parametrize("kind", ["reminder", "breach", "supervisor", "escalated"])
def test_the_webhook_body_names_a_shipped_step_as_the_messages_do(step, label, name, kind):
    """A receiving system got `emergency_measure` alone where the e-mail and SMS said "Biện
    pháp bảo vệ khẩn cấp": it had to know the pack to show which step was due or missed."""
    about = {"kind": kind} if kind in ("reminder", "breach") else {**MISSED, "kind": kind}
    a = alert(**{**MILESTONE, "milestone": step, "milestone_label": label,
                 "milestone_name": name, **about})
    for lang, shown in (("vi", label), ("en", name)):  # `*_label` in the body's `lang`
        body = render(a, "webhook", lang, link(a)).body
        assert (body["milestone"], body["milestone_label"], body["milestone_name"]) == (
            step, shown, name)
        assert CANARY_PHONE not in repr(body)
    [item] = render_bundle([(a, link(a))], "webhook", "vi").body["items"]
    assert (item["milestone_label"], item["milestone_name"]) == (label, name)


def test_the_webhook_body_gives_a_step_s_english_name_only_when_there_is_one():
    # An alert written before alerts carried the pack's English name: ours of a shipped step.
    data = alert(**MILESTONE).model_dump(mode="json", exclude={"milestone_name"})
    body = render(AlertRequested.model_validate(data), "webhook", "vi", "L").body
    assert body["milestone_name"] == "Emergency protection measure"
    # A step the pack names in Vietnamese only: no English name, not the Vietnamese one as it.
    a = alert(**{**MILESTONE, "milestone": "home_visit", "milestone_label": "Thăm gia đình",
                 "milestone_name": None})
    body = render(a, "webhook", "vi", "L").body
    assert (body["milestone_label"], body["milestone_name"]) == ("Thăm gia đình", None)
    # Not about a step: both keys there, null.
    body = render(alert(), "webhook", "en", "L").body
    assert (body["milestone_label"], body["milestone_name"]) == (None, None)


def test_a_bundle_tells_the_deadline_to_meet_first():
    """A storm's bundled reminders said which cases but not by when: an officer could not tell
    which to take first (found by the wording review)."""
    later = alert(alert_id="al-1", case_id="C-000001", severity="P3", kind="reminder",
                  ack_due=DUE + timedelta(hours=3))
    # A milestone's reminder: its deadline is the step's (10:45), not the acknowledgement's.
    step = alert(alert_id="al-2", case_id="C-000002", severity="P3", **{
        **MILESTONE, "milestone_due": DUE + timedelta(hours=1), "ack_due": DUE - timedelta(hours=9)})
    items = [(later, link(later)), (step, link(step))]
    vi = render_bundle(items, "sms", "vi").text
    assert fold_to_gsm7(vi).startswith("Beacon: 2 vu, han som nhat 10:45 29/11. P3 ")
    assert render_bundle(items, "sms", "en").text.startswith(
        "Beacon: 2 cases, earliest due 10:45 29/11. P3 ")
    assert ("2 vụ việc cần xử lý (2 lời nhắc); hạn sớm nhất là 10:45 29/11/2026 (giờ Việt Nam):"
            in render_bundle(items, "email", "vi").text)
    assert ("2 cases that need action (2 reminders); the first deadline is 10:45 29/11/2026 "
            "(Viet Nam time, UTC+7):" in render_bundle(items, "email", "en").text)


def test_a_bundle_deadline_at_midnight_reads_as_24_00_of_the_day_before():
    midnight = datetime(2026, 2, 23, 17, 0, tzinfo=UTC)  # 00:00 on 24/02 in Viet Nam
    items = [(a, link(a)) for a in (alert(alert_id="al-1", case_id="C-000001", severity="P4",
                                          kind="reminder", ack_due=midnight),)]
    sms = render_bundle(items, "sms", "vi").text
    assert "han som nhat 24:00 23/02." in fold_to_gsm7(sms) and "00:00" not in sms
    assert "the first deadline is 24:00 23/02/2026" in render_bundle(items, "email", "en").text


@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("now", [None, LATE])
def test_an_sms_bundle_with_its_deadline_fits_two_segments_for_any_two_categories(lang, now):
    for one, two in itertools.combinations(CATEGORIES, 2):
        items = []
        for i, category in enumerate((one, two)):
            a = alert(alert_id=f"al-{i}", case_id=f"{CASE[:-1]}{i}", category=category,
                      severity="P3", kind="reminder")
            items.append((a, link(a)))
        sms = render_bundle(items, "sms", lang, now).text
        assert sms_segments(sms)[1] <= 2, sms
        assert "09:45 29/11" in sms and sms.count("https://") == 2


@pytest.mark.parametrize("lang", ["vi", "en"])
def test_an_sms_bundle_with_long_links_drops_its_deadline_not_a_segment(lang):
    """With a ministry's base URL (35 characters) two links left no room for the first deadline:
    pairs of categories went in three segments (found by the verification review). The
    bundle then goes as before, without it: each link's page shows it."""
    base = "https://tongdai111.molisa.gov.vn/bc"  # 35 characters
    for one, two in itertools.combinations(CATEGORIES, 2):
        items = []
        for i, category in enumerate((one, two)):
            a = alert(alert_id=f"al-{i}", case_id=f"{CASE[:-1]}{i}", category=category,
                      severity="P3", kind="reminder")
            items.append((a, sign_link(base, a.case_id, "view", a.authority_id,
                                       DUE + timedelta(days=7), "secret")))
        sms = render_bundle(items, "sms", lang).text
        assert sms_segments(sms)[1] <= 2, sms
        assert sms.count(base) == 2


def test_the_built_in_bundle_sms_tells_the_deadline_too(broken_dir):
    (broken_dir / "en" / "bundle_sms.j2").write_text("{{ no_such_field }}")
    m = Renderer(broken_dir).render_bundle(reminders(2), "sms", "en")
    assert m.render_error and m.text.startswith("Beacon 2, earliest due 09:45 29/11: P3 ")
    assert sms_segments(m.text)[1] <= 2


ESCALATED = dict(kind="escalated", tier="province", authority_id="province:1:child_protection",
                 about_authority_id="commune:4:child_protection")
WHY_ESCALATED = [  # the SMS's sentence, and the short form's words (sent with a long base URL)
    ("deadline_missed", "vi", "Cap duoi chua xac nhan dung han.", "cap duoi qua han"),
    ("deadline_missed", "en", "The tier below did not acknowledge in time.", "tier below silent"),
    ("unreachable", "vi", "Khong lien lac duoc cap duoi.", "cap duoi khong lien lac duoc"),
    ("unreachable", "en", "The tier below cannot be reached.", "tier below unreachable"),
    # An alert written before about_reason: the deadline was the only cause then.
    (None, "vi", "Cap duoi chua xac nhan dung han.", "cap duoi qua han"),
    (None, "en", "The tier below did not acknowledge in time.", "tier below silent")]


@pytest.mark.parametrize("reason,lang,why,short", WHY_ESCALATED)
def test_an_escalated_sms_says_why_the_case_came_up(reason, lang, why, short):
    """A province officer's SMS said "Escalated to you" and nothing of why; the e-mail named the
    silent commune (found by the wording review)."""
    a = alert(**ESCALATED, about_reason=reason)
    sms = fold_to_gsm7(render(a, "sms", lang, link(a)).text)
    ask = "Xac nhan da tiep nhan truoc" if lang == "vi" else "Acknowledge receipt by"
    assert f"{why} {ask} 09:45 29/11" in sms
    ctx = build_context(a, lang, link(a))
    assert f", {short}, " in fold_to_gsm7(Renderer()._tpl(lang, "sms_short", ctx))
    # An escalation the tier below did not cause has no such sentence.
    assert "tier below" not in render(alert(kind="escalated"), "sms", "en", link(a)).text


@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("reason", ["deadline_missed", "unreachable"])
@pytest.mark.parametrize("now", [None, LATE])
def test_a_p1_escalated_sms_that_says_why_still_fits_two_segments(category, reason, lang, now):
    a = alert(**ESCALATED, category=category, about_reason=reason)
    sms = render(a, "sms", lang, link(a), now).text
    assert sms_segments(sms)[1] <= 2, sms
    assert a.case_id in sms and "09:45 29/11" in sms
    assert ("cap duoi" if lang == "vi" else "tier below") in fold_to_gsm7(sms).lower()


@pytest.mark.parametrize("lang,says", [
    ("vi", "Quy co quan da xac nhan, de nghi chi dao."),
    ("en", "You have acknowledged: please direct it.")])
@pytest.mark.parametrize("category", CATEGORIES)
def test_an_escalated_alert_to_a_province_that_acknowledged_asks_no_acknowledgement(
        category, lang, says):
    """A province acting on a case had acknowledged it; the commune then missed its deadline.
    The province's SMS asked it to acknowledge again by the deadline it had met (found by the
    wording helper). Escalation now sends it as information, and it says so, in two segments."""
    a = alert(**ESCALATED, role="inform", category=category, about_reason="deadline_missed")
    sms = render(a, "sms", lang, link(a)).text
    assert sms_segments(sms)[1] <= 2, sms
    assert says in fold_to_gsm7(sms)
    assert ("Xac nhan da tiep nhan" if lang == "vi" else "Acknowledge receipt") not in sms
    body = render(a, "email", lang, link(a)).text
    assert ("Không cần xác nhận lại" if lang == "vi" else "No new acknowledgement") in body


# Every tier that has one above it, in the 2020 pack's four (commune -> district -> province ->
# national): the tier up is told which one missed, not "the tier below".
TIERS_BELOW = load_pack("vn2020").tiers[:-1]
NAMED = {  # the SMS's sentence and the e-mail's line, by language; {} is the tier's name
    ("deadline_missed", "vi"): ("Cấp {} chưa xác nhận đúng hạn.", "Cấp {} chưa xác nhận đúng hạn: "),
    ("deadline_missed", "en"): ("The {} level did not acknowledge in time.",
                                "The {} level did not acknowledge in time: "),
    ("unreachable", "vi"): ("Không liên lạc được cấp {}.", "Không liên lạc được với cấp {}: "),
    ("unreachable", "en"): ("The {} level cannot be reached.", "The {} level could not be reached: "),
    ("milestone_missed", "vi"): ("Cấp {} đã quá hạn Biện pháp bảo vệ khẩn cấp từ 18:45 29/11.",
                                 "Cấp {} đã quá hạn: "),
    ("milestone_missed", "en"): ("The {} level missed: Emergency protection measure, due 18:45 29/11",
                                 "The {} level missed a deadline: ")}


@pytest.mark.parametrize("below", TIERS_BELOW)
@pytest.mark.parametrize("reason", ["deadline_missed", "unreachable", "milestone_missed"])
@pytest.mark.parametrize("lang", ["vi", "en"])
def test_an_escalated_message_names_the_tier_that_missed(below, reason, lang):
    """"Cấp dưới chưa xác nhận đúng hạn" did not say which tier: under the 2020 pack a
    province could not tell a silent district from a silent commune."""
    name = TIER_LABELS[lang][below]
    says, line = (t.format(name) for t in NAMED[reason, lang])
    step = MILESTONE if reason == "milestone_missed" else {}
    for role in ("act", "inform"):  # an acknowledged tier up is told for information
        for category in CATEGORIES:
            a = alert(**{**step, **ESCALATED, "about_tier": below, "about_reason": reason,
                         "role": role, "category": category})
            sms = render(a, "sms", lang, link(a)).text
            assert sms_segments(sms)[1] <= 2, sms
            assert fold_to_gsm7(says) in fold_to_gsm7(sms), sms
            assert "cap duoi" not in fold_to_gsm7(sms).lower() and "tier below" not in sms
        email = render(a, "email", lang, link(a)).text
        assert line + "commune:4:child_protection" in email
        assert "cấp dưới" not in email.lower() and "tier below" not in email
    if reason != "milestone_missed":  # the short form, sent with a long base URL
        short = Renderer()._tpl(lang, "sms_short", build_context(a, lang, link(a)))
        assert (f", cấp {name} " if lang == "vi" else f", {name} level ") in short


@pytest.mark.parametrize("lang,says", [("vi", "hỗ trợ cấp huyện xử lý"),
                                       ("en", "please direct and support the district level")])
def test_an_acknowledged_tier_up_is_asked_to_direct_the_tier_that_missed(lang, says):
    a = alert(**ESCALATED, role="inform", about_tier="district", about_reason="deadline_missed")
    assert says in render(a, "email", lang, link(a)).text


def test_the_webhook_body_gives_the_tier_that_missed():
    a = alert(**ESCALATED, about_tier="district", about_reason="deadline_missed")
    assert render(a, "webhook", "vi", link(a)).body["about_tier"] == "district"
    assert render(alert(), "webhook", "vi", link(a)).body["about_tier"] is None


# --- a holder told of its own missed milestone; deadlines gone by when the message is sent ---

OWN_MISS = {**MILESTONE, "kind": "breach"}  # what escalation sends the holder at the deadline


@pytest.mark.parametrize("lang,sms_says,email_says,subject", [
    ("vi", "Da qua han Bien phap bao ve khan cap tu 18:45 29/11, de nghi thuc hien ngay.",
     "Việc quá hạn: Biện pháp bảo vệ khẩn cấp (emergency_measure); đã quá hạn từ 18:45 29/11/2026",
     "Quá hạn thực hiện (Biện pháp bảo vệ khẩn cấp)"),
    ("en", "Emergency protection measure overdue since 18:45 29/11 (VN time): do it now.",
     "Step overdue: Emergency protection measure (emergency_measure); overdue since 18:45 "
     "29/11/2026", "Step overdue (Emergency protection measure)")])
def test_a_holder_is_told_its_own_milestone_is_overdue_not_its_acknowledgement(
        lang, sms_says, email_says, subject):
    """The holder of a missed 12-hour emergency measure was not told at all; told as a
    `breach`, it must read as the step overdue, not as "acknowledgement overdue", and not give
    the acknowledgement's deadline (09:45) as the one missed."""
    a = alert(**OWN_MISS)
    sms = render(a, "sms", lang, link(a)).text
    assert sms_says in fold_to_gsm7(sms) and sms_segments(sms)[1] <= 2, sms
    assert "09:45" not in sms and "xac nhan" not in fold_to_gsm7(sms).lower()
    assert "acknowledg" not in sms.lower()
    email = render(a, "email", lang, link(a))
    assert subject in email.subject and email_says in email.text
    assert "09:45" not in email.text
    for wrong in ("Quá hạn xác nhận", "Acknowledgement overdue", "Thời hạn: trước", "Due: "):
        assert wrong not in email.subject + email.text
    short = Renderer()._tpl(lang, "sms_short", build_context(a, lang, link(a)))
    assert ("qua han Bien phap bao ve khan cap tu 18:45" if lang == "vi" else
            "Emergency protection measure overdue since 18:45") in fold_to_gsm7(short)
    body = render(a, "webhook", lang, link(a)).body
    assert (body["kind"], body["milestone"], body["about_reason"]) == (
        "breach", "emergency_measure", None)
    # The built-in text, should a template fail, does not say the deadline is still to come.
    from services.notifier.render import _fallback

    built_in = _fallback(build_context(a, lang, link(a)), "sms", "x").text
    assert ("Qua han tu 18:45 29/11." if lang == "vi" else "Overdue since 18:45 29/11.") in \
        fold_to_gsm7(built_in)


@pytest.mark.parametrize("lang,before,after", [
    ("vi", "Xac nhan da tiep nhan truoc 09:45 29/11.",
     "Xac nhan da tiep nhan ngay, da qua han tu 09:45 29/11."),
    ("en", "Acknowledge receipt by 09:45 29/11 (VN time).",
     "Overdue since 09:45 29/11 (VN time): acknowledge receipt now.")])
def test_an_alert_sent_after_its_deadline_says_overdue_since_not_by(lang, before, after):
    """A report entered late: the alert went out after its acknowledgement deadline and asked
    for it "by 12:42" at 12:46 (found by the day-in-the-life review). Rendered when sent."""
    a = alert()
    assert before in fold_to_gsm7(render(a, "sms", lang, link(a), DUE - timedelta(minutes=1)).text)
    sms = fold_to_gsm7(render(a, "sms", lang, link(a), DUE + timedelta(minutes=1)).text)
    assert after in sms and before not in sms
    email = render(a, "email", lang, link(a), DUE + timedelta(minutes=1)).text
    if lang == "vi":
        assert "Đã quá hạn xác nhận từ 09:45 29/11/2026 (giờ Việt Nam)." in email
        assert "Hạn xác nhận đã tiếp nhận:" not in email
    else:
        assert "Overdue since: 09:45 29/11/2026 (Viet Nam time, UTC+7)." in email
        assert "Acknowledge receipt by" not in email
    short = fold_to_gsm7(Renderer()._tpl(lang, "sms_short", build_context(a, lang, link(a), LATE)))
    assert ("qua han tu 09:45 29/11" if lang == "vi" else "ack overdue since 09:45 29/11") in short
    # The webhook body's fields are as they were: a receiving system reads the deadline itself.
    assert render(a, "webhook", lang, link(a), LATE).body == render(a, "webhook", lang, link(a)).body


@pytest.mark.parametrize("lang,before,after", [
    ("vi", "xác nhận đã tiếp nhận trước 09:45",
     "Đề nghị quý cơ quan chỉ đạo, phối hợp thực hiện ngay; xác nhận đã tiếp nhận ngay (đã quá "
     "hạn từ 09:45 29/11/2026, giờ Việt Nam)."),
    ("en", "acknowledge receipt by 09:45",
     "Please direct and support it now; acknowledge receipt at once (overdue since 09:45 "
     "29/11/2026, Viet Nam time, UTC+7).")])
def test_the_tier_up_told_of_a_missed_milestone_late_is_not_asked_by_a_time_gone(lang, before, after):
    """The province's e-mail read "Please direct and support it now; acknowledge receipt by
    12:42", sent at 12:46."""
    a = alert(**{**MILESTONE, **ESCALATED, "role": "act", "about_reason": "milestone_missed"})
    assert before in render(a, "email", lang, link(a), DUE - timedelta(minutes=1)).text
    email = render(a, "email", lang, link(a), DUE + timedelta(minutes=1)).text
    assert after in email and before not in email


@pytest.mark.parametrize("lang,sms_says,email_says", [
    ("vi", "Da qua han Bien phap bao ve khan cap tu 18:45 29/11",
     "đã quá hạn từ 18:45 29/11/2026"),
    ("en", "Emergency protection measure overdue since 18:45 29/11", "overdue since 18:45 29/11/2026")])
def test_a_milestone_reminder_sent_after_the_step_s_deadline_says_it_is_overdue(
        lang, sms_says, email_says):
    a = alert(**MILESTONE)  # the step due 18:45; the notifier sends it at 18:46
    late = DUE + timedelta(hours=9, minutes=1)
    sms = fold_to_gsm7(render(a, "sms", lang, link(a), late).text)
    assert sms_says in sms and "Phai hoan thanh" not in sms and "to be done by" not in sms
    email = render(a, "email", lang, link(a), late).text
    assert email_says in email and "Thời hạn: trước" not in email and "Due: " not in email
    # Still to come a minute before.
    assert "Phai hoan thanh" in fold_to_gsm7(
        render(a, "sms", "vi", link(a), late - timedelta(minutes=2)).text)


def test_a_bundle_sent_after_a_deadline_says_which_is_overdue():
    past = alert(alert_id="al-1", case_id="C-000001", severity="P3", kind="reminder")  # 09:45
    later = alert(alert_id="al-2", case_id="C-000002", severity="P3", kind="reminder",
                  ack_due=DUE + timedelta(hours=3))
    items = [(past, link(past)), (later, link(later))]
    now = DUE + timedelta(minutes=1)
    assert fold_to_gsm7(render_bundle(items, "sms", "vi", now).text).startswith(
        "Beacon: 2 vu, qua han tu 09:45 29/11. P3 ")
    assert render_bundle(items, "sms", "en", now).text.startswith(
        "Beacon: 2 cases, overdue since 09:45 29/11. P3 ")
    vi = render_bundle(items, "email", "vi", now).text
    assert "; có việc đã quá hạn từ 09:45 29/11/2026 (giờ Việt Nam):" in vi
    assert "quá hạn xác nhận từ 09:45 29/11/2026" in vi and "hạn xác nhận 12:45 29/11/2026" in vi
    en = render_bundle(items, "email", "en", now).text
    assert "; one is overdue since 09:45 29/11/2026" in en
    assert "acknowledgement overdue since 09:45" in en and "acknowledge by 12:45" in en


def test_the_built_in_messages_say_a_deadline_gone_by_is_overdue(broken_dir):
    (broken_dir / "vi" / "sms.j2").write_text("{{ no_such_field }}")
    (broken_dir / "en" / "bundle_sms.j2").write_text("{{ no_such_field }}")
    a = alert()
    m = Renderer(broken_dir).render(a, "sms", "vi", link(a), LATE)
    assert m.render_error and "Qua han tu 09:45 29/11." in fold_to_gsm7(m.text)
    assert "Han 09:45" in fold_to_gsm7(Renderer(broken_dir).render(a, "sms", "vi", link(a)).text)
    bundle = Renderer(broken_dir).render_bundle(reminders(2), "sms", "en", LATE)
    assert bundle.render_error and bundle.text.startswith("Beacon 2, overdue since 09:45 29/11: P3 ")


@pytest.mark.parametrize("lang,asked,granted", [
    ("vi", "xử lý và xác nhận đã tiếp nhận", "xử lý (đã xác nhận tiếp nhận, không cần xác nhận lại)"),
    ("en", "action, acknowledge receipt", "action (receipt acknowledged already)")])
def test_a_target_that_has_acknowledged_is_not_asked_to_acknowledge_again(lang, asked, granted):
    """A reminder of the emergency measure, or the news that the case became P1, to a commune
    that had acknowledged: it comes without an acknowledgement deadline, and its e-mail asked
    it to "act and acknowledge receipt", which it had done (found by a review of a hotline
    day). A target yet to acknowledge is still asked."""
    done = render(alert(**{**MILESTONE, "kind": "reminder", "ack_due": None}), "email", lang,
                  "https://b.example/a/x")
    assert granted in done.text and asked not in done.text
    assert "xác nhận đã tiếp nhận:" not in done.text and "acknowledge receipt:" not in done.text
    owed = render(alert(), "email", lang, "https://b.example/a/x")
    assert asked in owed.text


# --- tiers named as the pack names them; a breach says who was told; supervisors' own office ---


@pytest.mark.parametrize("lang,to,missed", [
    ("vi", ", cấp phường, mã ", "Cấp phường chưa xác nhận đúng hạn."),
    ("en", ", ward level, ", "The ward level did not acknowledge in time.")])
def test_messages_name_a_tier_as_the_pack_names_it(lang, to, missed):
    """Tier names were the notifier's own: a pack's tier it did not know read as its code
    ("cấp ward"), and a pack could not rename one (nothing is to be hard-wired)."""
    ward = Label(vi="phường", en="ward")
    a = alert(tier="ward", tier_label=ward)
    assert to in render(a, "email", lang, link(a)).text
    up = alert(**ESCALATED, about_tier="ward", about_tier_label=ward, about_reason="deadline_missed")
    sms = render(up, "sms", lang, link(up)).text
    assert fold_to_gsm7(missed) in fold_to_gsm7(sms) and sms_segments(sms)[1] <= 2, sms
    # A pack renaming a shipped tier is named its way; an alert written before alerts carried
    # the pack's names is named by the notifier's.
    renamed = alert(tier_label=Label(vi="xã, phường", en="commune or ward"))
    assert (", cấp xã, phường, mã " if lang == "vi" else ", commune or ward level, ") in render(
        renamed, "email", lang, link(a)).text
    assert (", cấp xã, mã " if lang == "vi" else ", commune level, ") in render(
        alert(), "email", lang, link(a)).text


@pytest.mark.parametrize("told,vi,en", [
    (dict(told_supervisors=True, told_tier="province",
          told_tier_label=Label(vi="tỉnh", en="province")),
     "ngay; cơ quan quản lý và cấp tỉnh đã được báo.",
     "now; your supervisors and the province level have been told."),
    (dict(told_supervisors=True), "ngay; cơ quan quản lý đã được báo.",
     "now; your supervisors have been told."),
    (dict(told_supervisors=False, told_tier="district"), "ngay; cấp huyện đã được báo.",
     "now; the district level has been told."),
    (dict(told_supervisors=False), "tiếp nhận ngay.\n", "acknowledge now.\n"),  # nobody
    ({}, "tiếp nhận ngay.\n", "acknowledge now.\n")])  # an alert written before: not known
def test_a_breach_says_only_who_was_told(told, vi, en):
    """"Your supervisors and the tier above have been told" went to every authority that
    missed its deadline: under a pack that tells neither, at the national tier (none above),
    or to a committee (no supervisor), it was false."""
    from services.notifier.render import _fallback

    a = alert(kind="breach", **told)
    for lang, says in (("vi", vi), ("en", en)):
        email = render(a, "email", lang, link(a)).text
        assert says in email, email
        assert "cấp trên" not in email and "tier above" not in email
        if not told.get("told_supervisors") and not told.get("told_tier"):
            assert "đã được báo" not in email and "been told" not in email
        # Nor does any other message of it claim so.
        for text in (render(a, "sms", lang, link(a)).text,
                     _fallback(build_context(a, lang, link(a)), "email", "x").text):
            assert "duoc bao" not in fold_to_gsm7(text) and "told" not in text


SUPERVISED = dict(kind="supervisor", role="inform", agency="people_committee",
                  authority_id="commune:4:people_committee",
                  about_authority_id="commune:4:child_protection")
SUPERVISOR_SAYS = {  # the SMS's sentence by reason and language; {} is the supervised office
    ("deadline_missed", "vi"): "{} quá hạn 09:45 29/11, cần đôn đốc.",
    ("deadline_missed", "en"): "{} did not acknowledge by 09:45 29/11 (VN time): please follow up.",
    ("unreachable", "vi"): "{} không liên lạc được, cần liên hệ trực tiếp.",
    ("unreachable", "en"): "{} cannot be reached: please contact it.",
    ("milestone_missed", "vi"): "{} đã quá hạn Biện pháp bảo vệ khẩn cấp từ 18:45 29/11.",
    ("milestone_missed", "en"): "{} missed: Emergency protection measure, due 18:45 29/11 (VN time)."}


@pytest.mark.parametrize("reason", ["deadline_missed", "unreachable", "milestone_missed"])
@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("tier,office", [
    ("commune", {"vi": "Cơ quan cấp xã", "en": "The commune-level authority"}),
    (None, {"vi": "Cơ quan được giao", "en": "The authority in charge"})])  # written before about_tier
def test_a_supervisor_is_told_of_its_own_office_not_of_a_tier_below(reason, lang, tier, office):
    """A commune's People's Committee read "Cấp dưới quá hạn" ("the tier below") of its own
    commune's child-protection office, at the same level. It is told of the office in charge,
    by its tier when the alert gives it, in two segments."""
    step = MILESTONE if reason == "milestone_missed" else {}
    says = SUPERVISOR_SAYS[reason, lang].format(office[lang])
    for category in CATEGORIES:
        a = alert(**{**step, **SUPERVISED, "about_reason": reason, "about_tier": tier,
                     "category": category})
        sms = render(a, "sms", lang, link(a)).text
        assert fold_to_gsm7(says) in fold_to_gsm7(sms) and sms_segments(sms)[1] <= 2, sms
        for text in (sms, render(a, "email", lang, link(a)).text,
                     Renderer()._tpl(lang, "sms_short", build_context(a, lang, link(a)))):
            assert "cap duoi" not in fold_to_gsm7(text).lower() and "below" not in text, text


@pytest.mark.parametrize("lang", ["vi", "en"])
@pytest.mark.parametrize("step,label,name", SHIPPED_STEPS, ids=[s[0] for s in SHIPPED_STEPS])
def test_the_short_sms_and_the_built_in_text_of_a_missed_step_name_who_missed(lang, step, label, name):
    """The full SMS said "Cấp xã đã quá hạn ..."; the short one (sent with a long base URL) and
    the built-in text (sent when a template fails) said only "quá hạn", which read as the
    recipient's own deadline."""
    from services.notifier.render import _fallback

    base = "https://tongdai111.molisa.gov.vn/bc"  # a ministry's: the full SMS may not fit
    for kind, tier, who in (("escalated", "district", {"vi": "cấp huyện", "en": "district level"}),
                            ("escalated", None, {"vi": "cấp dưới", "en": "tier below"}),
                            ("supervisor", "commune", {"vi": "cơ quan cấp xã",
                                                       "en": "commune-level authority"})):
        extra = ESCALATED if kind == "escalated" else SUPERVISED
        for category in CATEGORIES:
            a = alert(**{**MILESTONE, **extra, "kind": kind, "about_reason": "milestone_missed",
                         "about_tier": tier, "milestone": step, "milestone_label": label,
                         "milestone_name": name, "category": category})
            url = sign_link(base, a.case_id, "view", a.authority_id, DUE + timedelta(days=7), "s")
            ctx = build_context(a, lang, url)
            short = Renderer()._tpl(lang, "sms_short", ctx)
            missed = (f", {who['vi']} quá hạn {label} từ 18:45 29/11 " if lang == "vi"
                      else f", {who['en']} missed {name}, due 18:45 29/11 ")
            assert missed in short and sms_segments(fold_to_gsm7(short))[1] <= 2, short
            assert sms_segments(render(a, "sms", lang, url).text)[1] <= 2
            built_in = _fallback(ctx, "sms", "x").text
            says = (f"{who['vi'][0].upper()}{who['vi'][1:]} quá hạn từ 18:45 29/11." if lang == "vi"
                    else f"The {who['en']}: overdue since 18:45 29/11.")
            assert fold_to_gsm7(says) in fold_to_gsm7(built_in), built_in
            assert sms_segments(built_in)[1] <= 2
