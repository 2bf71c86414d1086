from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.links import sign_link, verify_link

NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
EXP = NOW + timedelta(days=7)
BASE = "https://beacon.example.gov.vn"
CASE, AUTH = "C-01KB2X7Q9M3N8P4R5S6T7V8W9X", "vn-01-00004-child_protection"


def make(**kw):
    args = {"base_url": BASE, "case_id": CASE, "action": "view", "authority_id": AUTH, "expires_at": EXP,
                "secret": "s3cret"}
    args.update(kw)
    return sign_link(**args)


def check(link, **kw):
    args = {"authority_id": AUTH, "secret": "s3cret", "now": NOW}
    args.update(kw)
    return verify_link(link, **args)


def test_round_trip():
    url = make()
    assert url.startswith(BASE + "/a/")
    claims = check(url)
    assert claims.case_id == CASE and claims.action == "view" and claims.authority_id == AUTH
    assert claims.expires_at == EXP
    assert check(url.rsplit("/", 1)[1]) == claims  # the bare token works too


def test_expiry():
    url = make()
    assert check(url, now=EXP - timedelta(seconds=1))
    assert check(url, now=EXP) is None
    assert check(url, now=EXP + timedelta(days=1)) is None


def test_bound_to_authority_secret_and_action():
    url = make(action="ack")
    assert check(url, action="ack")
    assert check(url, action="view") is None
    assert check(url, authority_id="vn-01-00005-child_protection") is None
    assert check(url, secret="other") is None


def test_tampering_any_part_fails():
    token = make().rsplit("/", 1)[1]
    case, action, exp, sig = token.split(".")
    later = format(int(exp, 36) + 86400, "x")  # hex is valid base 36 too: any change will do
    for bad in [
        f"C-01KB2X7Q9M3N8P4R5S6T7V8W9Y.{action}.{exp}.{sig}",
        f"{case}.ack.{exp}.{sig}",
        f"{case}.{action}.{later}.{sig}",
        f"{case}.{action}.{exp}.{sig[:-1]}{'B' if sig.endswith('A') else 'A'}",
        f"{case}.{action}.{exp}",
        "",
        "garbage",
        f"{case}.{action}.!!.{sig}",
    ]:
        assert check(bad) is None, bad


@given(case_id=st.text(min_size=1, max_size=40), action=st.sampled_from(["view", "ack"]))
def test_any_case_id_survives_the_url(case_id, action):
    url = make(case_id=case_id, action=action)
    claims = check(url, action=action)
    assert claims is not None and claims.case_id == case_id


def test_link_is_short_enough_for_sms():
    assert len(make()) <= 100


def test_bad_arguments():
    with pytest.raises(ValueError):
        make(action="Bad Action")
    with pytest.raises(ValueError):
        make(secret="")
    with pytest.raises(ValueError):
        make(expires_at=datetime(2026, 12, 1))


def test_an_authority_the_directory_no_longer_has_is_shown_by_its_id():
    from types import SimpleNamespace

    from services.intake.api.links import _authority

    class Gone:
        def get(self, authority_id):
            raise KeyError(authority_id)

    assert _authority(SimpleNamespace(directory=Gone()), "commune:4:police") == \
        "<b>commune:4:police</b>"
