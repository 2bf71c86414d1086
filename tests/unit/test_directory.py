"""The generated authority directory: every province and commune, readable ids, demo contacts."""

import pytest
from vietnam_provinces import Province, Ward

from schemas.directory import Authority
from schemas.events import Contact
from schemas.reports import Location
from services.escalation.directory import build_directory, validate_directory
from services.escalation.rulepack import load_pack

PACK = load_pack("default")
DIRECTORY = build_directory(PACK)
BA_DINH = Location(province_code=1, commune_code=4)


def test_covers_every_province_and_commune_for_every_agency():
    provinces, communes = len(list(Province.iter_all())), len(list(Ward.iter_all()))
    assert (provinces, communes) == (34, 3321)
    assert len(DIRECTORY) == len(PACK.agencies) * (communes + provinces + 1)


def test_readable_stable_ids():
    assert DIRECTORY.resolve("commune", "child_protection", BA_DINH).id == "commune:4:child_protection"
    assert DIRECTORY.resolve("province", "police", BA_DINH).id == "province:1:police"
    assert DIRECTORY.resolve("national", "child_protection", BA_DINH).id == "national:VN:child_protection"


def test_authority_record():
    a = DIRECTORY.get("commune:4:child_protection")
    assert isinstance(a, Authority)
    assert (a.tier, a.agency, a.unit_code) == ("commune", "child_protection", "4")
    assert "Ba Đình" in a.name
    assert [c.channel for c in a.contacts] == ["webhook", "email", "sms"]
    assert all(c.demo for c in a.contacts)
    assert a.contacts[0].address == "http://127.0.0.1:8025/hooks/commune:4:child_protection"
    assert a.contacts[1].address == "commune.4.child_protection@demo.beacon.invalid"
    assert a.contacts[2].address.startswith("+8400000") and a.contacts[2].address[1:].isdigit()
    assert a.supervisors == ["commune:4:people_committee"]
    assert a.parent == "province:1:child_protection"


def test_chain_up_to_national():
    province = DIRECTORY.get("province:1:child_protection")
    assert province.supervisors == ["province:1:people_committee"]
    assert province.parent == "national:VN:child_protection"
    national = DIRECTORY.get("national:VN:child_protection")
    assert (national.parent, national.supervisors) == (None, [])
    committee = DIRECTORY.get("commune:4:people_committee")
    assert (committee.supervisors, committee.parent) == ([], "province:1:people_committee")


def test_contacts_use_the_given_endpoints():
    d = build_directory(PACK, webhook_base="http://localhost:9/", sms_number_prefix="+849",
                        mail_domain="example.invalid")
    a = d.get("province:79:police")
    assert [c.address for c in a.contacts][:2] == [
        "http://localhost:9/hooks/province:79:police", "province.79.police@example.invalid"]
    assert a.contacts[2].address.startswith("+849")


def test_sms_numbers_are_unique():
    ids = [i for i in DIRECTORY.ids() if i.startswith(("province:", "national:"))]
    ids += [f"commune:{int(w.code)}:{a}" for w in list(Ward.iter_all())[:300] for a in PACK.agencies]
    numbers = [DIRECTORY.get(i).contacts[2].address for i in ids]
    assert len(numbers) == len(set(numbers))


def test_unknown_ids_and_locations():
    for bad in ["commune:999999:child_protection", "province:1:army", "county:1:police", "x", 42]:
        assert bad not in DIRECTORY
    assert "commune:4:child_protection" in DIRECTORY
    with pytest.raises(KeyError):
        DIRECTORY.get("province:2:police")
    with pytest.raises(KeyError):
        DIRECTORY.resolve("commune", "police", Location(province_code=1, commune_code=999_999))
    with pytest.raises(KeyError, match="not in province"):
        DIRECTORY.resolve("commune", "police", Location(province_code=79, commune_code=4))
    with pytest.raises(KeyError):
        DIRECTORY.resolve("district", "police", BA_DINH)  # the default pack has no district tier


def test_get_is_cached_and_stable():
    assert DIRECTORY.get("commune:4:police") is DIRECTORY.get("commune:4:police")
    assert build_directory(PACK).get("commune:4:police") == DIRECTORY.get("commune:4:police")


@pytest.mark.parametrize("name", ["default", "vn2020"])
def test_every_routable_pair_resolves_everywhere(name):
    pack = load_pack(name)
    assert validate_directory(build_directory(pack), pack) == []


def test_synthetic_districts_group_communes_within_a_province():
    pack = load_pack("vn2020")
    d = build_directory(pack)
    units = d.units
    assert 600 < len(units.by_kind["district"]) < 800
    for commune, district in units.district_of.items():
        assert district.split("-")[0] == units.by_kind["commune"][commune].province
    a = d.resolve("district", "child_protection", BA_DINH)
    assert a.id == f"district:{units.district_of['4']}:child_protection"
    assert a.parent == "province:1:child_protection"
    assert d.get("commune:4:police").parent == f"district:{units.district_of['4']}:police"


def test_validate_reports_a_tier_it_cannot_place():
    data = PACK.model_dump(by_alias=True)
    data["tiers"] = ["commune", "region", "province", "national"]
    pack = type(PACK).model_validate(data)
    with pytest.raises(ValueError, match="region"):
        build_directory(pack)


def test_validate_reports_unresolvable_pairs():
    data = PACK.model_dump(by_alias=True)
    pack = type(PACK).model_validate(data)
    directory = build_directory(pack)
    directory.agency_labels.pop("cyber_police")  # as if the directory lacked that agency
    problems = validate_directory(directory, pack)
    assert problems and all("cyber_police" in p for p in problems)


def test_production_says_how_many_authorities_still_have_demo_contacts(monkeypatch):
    """Their alerts go to generated addresses that nobody reads."""
    from types import SimpleNamespace

    import structlog

    from services import runtime
    from services.escalation.directory_admin import OverlayDirectory

    directory = OverlayDirectory(build_directory(PACK))
    real, kept = "commune:4:child_protection", "commune:4:police"
    directory.entries = {  # an admin set the one's contacts; the other's, saved from `show`, not
        real: directory.get(real).model_copy(update={"contacts": [
            Contact(channel="email", address="bvte.xa4@hanoi.gov.vn")]}),
        kept: directory.get(kept)}
    rt = SimpleNamespace(settings=SimpleNamespace(env="production"), directory=directory)
    with structlog.testing.capture_logs() as logs:
        # A logger made now sees the capture (the module's is cached once logging is set up).
        monkeypatch.setattr(runtime, "log", structlog.get_logger("beacon"))
        assert runtime.warn_demo_contacts(rt) == len(DIRECTORY) - 1
    [said] = [e for e in logs if e["event"] == "directory_demo_contacts"]
    assert said["authorities"] == len(DIRECTORY) - 1 and "beacon directory set" in said["why"]
    rt.settings = SimpleNamespace(env="development")  # the demo directory is the point
    assert runtime.warn_demo_contacts(rt) == 0


def test_an_entry_saved_under_an_earlier_pack_climbs_as_the_directory_now_does():
    """Saved under the 2020 pack, commune police's entry named a district parent; after a
    rollback to the default pack (no districts) a P1 breach failed on it at every retry and
    nobody above was told (found by an admin's review)."""
    from services.escalation.directory_admin import OverlayDirectory

    directory = OverlayDirectory(build_directory(PACK))
    police = "commune:4:police"
    generated = directory.get(police)
    directory.entries = {police: generated.model_copy(update={
        "parent": "district:1-01:police", "supervisors": []})}
    now = directory.get(police)
    assert now.parent == generated.parent and now.parent in directory
    assert now.supervisors == []  # the admin's choice stands: none was unknown
    directory.entries[police] = generated.model_copy(update={
        "supervisors": ["district:1-01:people_committee", *generated.supervisors]})
    assert directory.get(police).supervisors == generated.supervisors  # the known ones kept
    directory.entries[police] = generated.model_copy(update={
        "supervisors": ["district:1-01:people_committee"]})
    assert directory.get(police).supervisors == generated.supervisors  # none known: generated
