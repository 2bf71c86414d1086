"""Reports as operators submit them (DOMAIN.md section 6), with canary identity."""

from datetime import UTC, datetime, timedelta

CANARIES = ("Canaryname", "Canaryreporter", "0987654321", "Canarytext")


def report(**overrides) -> dict:
    body = {
        "received_at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "channel": "phone",
        "category": "PHYS_VIOLENCE",
        "subcategory": None,
        "location": {"province_code": 1, "commune_code": 4},
        "other_locations": [],
        "setting": "home",
        "children": [{"age": 5, "sex": "female", "name": "Canaryname Thi Hidden"}],
        "indicators": ["ongoing"],
        "publicity": "PA0",
        "narrative": "Canarytext: the neighbour heard screaming.",
        "reporter": {"name": "Canaryreporter Van", "phone": "0987654321",
                     "relationship": "neighbour", "consent_to_contact": True},
    }
    body.update(overrides)
    return body
