"""An admin's directory entry (pure checks): production takes no webhook on this machine."""

from services.escalation.directory import build_directory
from services.escalation.directory_admin import check_entry
from services.escalation.rulepack import load_pack

PACK = load_pack("default")
DIRECTORY = build_directory(PACK)
ENTRY = {"name": "Bảo vệ trẻ em xã", "tier": "commune", "agency": "child_protection",
         "unit_code": "4", "supervisors": ["commune:4:people_committee"],
         "parent": "province:1:child_protection"}


def problems(address: str, production: bool, **contact) -> list:
    entry = {**ENTRY, "contacts": [{"channel": "webhook", "address": address, **contact}]}
    return check_entry(entry, DIRECTORY, PACK.tiers, list(PACK.agencies),
                       "commune:4:child_protection", production=production)[1]


def test_this_machine_takes_alerts_in_development_only():
    for address in ("http://127.0.0.1:8025/hooks/a", "http://localhost:8000/api/v1/reports",
                    "http://[::1]:8340/h"):
        assert problems(address, production=False) == []
        [(where, why)] = problems(address, production=True)
        assert where == ("contacts", 0, "address") and "production" in why
    assert problems("https://hooks.example.vn/beacon", production=True) == []


def test_a_demo_contact_kept_from_show_is_refused_in_production():
    """An entry saved from `beacon directory show` of a generated authority kept its demo
    contacts: alerts fell back to addresses nobody reads, and the start-up count missed it."""
    demo = "https://hooks.example.vn/beacon"
    assert problems(demo, production=False, demo=True) == []
    [(where, why)] = problems(demo, production=True, demo=True)
    assert where == ("contacts", 0, "demo") and "real address" in why
