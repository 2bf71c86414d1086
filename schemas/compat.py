"""Reading events written under the previous schema version.

Consumers accept the current and the previous version of every event type, so producers and
consumers can be upgraded in any order, and a replay (`beacon cases rebuild`) can read what was
written before an upgrade. Anything else (older, newer, an unreadable dataschema) is a ValueError:
the consumer dead-letters the event rather than guess what a newer producer meant.

History (docs/events.md, "Versioning"):
  v1  the first contracts.
  v2  beacon.delivery.outcome carries the `role` and `kind` of the alert it delivered, so a
      case's timeline can tell a failed reminder to an informed authority from a failed alert.
      Every other type is unchanged from v1.
"""

import re
from collections.abc import Callable
from typing import Any

Payload = dict[str, Any]

_DATASCHEMA = re.compile(r"^urn:beacon:schema:(?P<type>[a-z][a-z0-9_.]*):v(?P<version>[0-9]+)$")


def dataschema(etype: str, version: int) -> str:
    return f"urn:beacon:schema:{etype}:v{version}"


def version_of(etype: str, schema: str) -> int:
    """The version in an envelope's dataschema; ValueError when it is not one of ours."""
    m = _DATASCHEMA.match(schema)
    if m is None:
        raise ValueError(f"dataschema {schema!r} is not urn:beacon:schema:<type>:v<N>")
    if m["type"] != etype:
        raise ValueError(f"dataschema {schema!r} does not describe type {etype!r}")
    return int(m["version"])


def _delivery_outcome_v1(data: Payload) -> Payload:
    """v1 did not require role and kind. When absent, both follow from the alert id escalation
    made, `<case_id>:<authority_id>:<kind>[:<suffix>]`, and only an inform alert has the inform
    role (reminders, breaches, supervisor and escalated alerts are all about act targets)."""
    if "role" in data and "kind" in data:
        return data  # a v1 producer that sent them already: nothing to derive
    alert_id = data.get("alert_id")
    prefix = f"{data.get('case_id')}:{data.get('authority_id')}:"
    if not isinstance(alert_id, str) or not alert_id.startswith(prefix):
        raise ValueError(f"v1 delivery outcome: cannot tell the alert kind from alert_id {alert_id!r}")
    kind = alert_id.removeprefix(prefix).split(":", 1)[0]
    return {"kind": kind, "role": "inform" if kind == "inform" else "act", **data}


# (type, from version) -> the step to from version + 1. A type without a step is unchanged.
STEPS: dict[tuple[str, int], Callable[[Payload], Payload]] = {
    ("beacon.delivery.outcome", 1): _delivery_outcome_v1,
}


def upgrade(etype: str, schema: str, data: Payload, current: int) -> Payload:
    """`data` as version `current` of `etype`; ValueError unless it is the current or previous."""
    version = version_of(etype, schema)
    if version > current:
        raise ValueError(
            f"{etype} v{version} is newer than this consumer understands (v{current}): "
            "upgrade the consumer")
    if version < current - 1:
        raise ValueError(
            f"{etype} v{version} is too old: only v{current - 1} and v{current} are accepted")
    for v in range(version, current):
        step = STEPS.get((etype, v))
        if step is not None:
            data = step(data)
    return data
