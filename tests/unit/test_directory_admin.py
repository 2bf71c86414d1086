"""An admin's directory entry (pure checks): production takes no webhook on this machine."""

from services.escalation.directory import build_directory
from services.escalation.directory_admin import check_entry
from services.escalation.rulepack import load_pack

PACK = load_pack("default")
DIRECTORY = build_directory(PACK)
ENTRY = {"name": "Bảo vệ trẻ em xã", "tier": "commune", "agency": "child_protection",
         "unit_code": "4", "supervisors": ["commune:4:people_committee"],
         "parent": "province:1:child_protection"}


def problems(address: str, loopback: bool) -> list:
    entry = {**ENTRY, "contacts": [{"channel": "webhook", "address": address}]}
    return check_entry(entry, DIRECTORY, PACK.tiers, list(PACK.agencies),
                       "commune:4:child_protection", loopback=loopback)[1]


def test_this_machine_takes_alerts_in_development_only():
    for address in ("http://127.0.0.1:8025/hooks/a", "http://localhost:8000/api/v1/reports",
                    "http://[::1]:8340/h"):
        assert problems(address, loopback=True) == []
        [(where, why)] = problems(address, loopback=False)
        assert where == ("contacts", 0, "address") and "production" in why
    assert problems("https://hooks.example.vn/beacon", loopback=False) == []
