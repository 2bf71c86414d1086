"""`make docs`: write the contracts to docs/ from the pydantic models in schemas/.

- docs/schemas/<event type>.json: the JSON Schema of each event's `data`, `$id` = its dataschema
- docs/schemas/envelope.json: the CloudEvents envelope around them
- docs/schemas/report.json, case-update.json: what operators submit (the API request bodies)
- docs/asyncapi.json: AsyncAPI 3.0, the topics, their messages and who sends and receives them

tests/unit/test_schemas_docs.py fails when the committed files differ from what this writes, so
a model change without `make docs` does not go unnoticed. Output is deterministic (sorted keys).
"""

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas import compat
from schemas.events import EVENT_TYPES, SCHEMA_VERSION, Envelope, Topics
from schemas.reports import CaseUpdate, Report
from services.common.kafka import PARTITIONS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMAS_DIR = "schemas"  # under docs/
ASYNCAPI = "asyncapi.json"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
KAFKA_BINDING = "0.5.0"

REQUESTS: dict[str, type[BaseModel]] = {"report": Report, "case-update": CaseUpdate}

# The topics and what is written to each. Kept by hand: which handler emits what is code, not
# data (services/intake/api, services/escalation/handlers.py, services/notifier/handlers.py).
CHANNELS: dict[str, tuple[str, list[str]]] = {
    Topics.INPUTS: (
        ("Human inputs, accepted by intake: reports, follow-ups, acknowledgements, milestones, "
         "transfers. Codes only."),
        ["beacon.report.received", "beacon.case.updated", "beacon.target.acknowledged",
         "beacon.milestone.recorded", "beacon.transfer.requested"]),
    Topics.CASES: (
        "Escalation's decisions and the state changes of each case's targets.",
        ["beacon.case.decided", "beacon.target.escalated", "beacon.ack.recorded",
         "beacon.milestone.scheduled", "beacon.milestone.missed", "beacon.target.transferred",
         "beacon.target.released", "beacon.case.reopened"]),
    Topics.ALERTS: (
        "What escalation asks the notifier to tell one authority.",
        ["beacon.alert.requested"]),
    Topics.DELIVERIES: (
        "Delivery outcomes, one per attempt, written by the notifier.",
        ["beacon.delivery.outcome"]),
    Topics.RULEPACKS: (
        ("Published rule packs (compacted, one partition, keyed by pack version). Intake writes "
         "it when an admin publishes or rolls back; every instance reads all of it without a "
         "consumer group (services/escalation/pack_watcher.py)."),
        ["beacon.rulepack.published"]),
    Topics.DEADLETTER: (
        ("Records a consumer could not parse or kept failing on, unchanged, with the reason in "
         "headers. Read by operators, not by services."),
        []),
}

# One line per event type for the AsyncAPI messages and the schema files (docs/events.md: fields).
SUMMARIES: dict[str, str] = {
    "beacon.report.received": "A report accepted by intake, as codes; it opened a case or joined one.",
    "beacon.case.updated": "A follow-up on a case: indicators, publicity, a supervisor's override.",
    "beacon.target.acknowledged": "An authority's user acknowledged a case through the API.",
    "beacon.case.decided": "Escalation's decision on a case: severity, publicity, targets.",
    "beacon.alert.requested": "Escalation asks the notifier to tell one authority about a case.",
    "beacon.target.escalated": "A deadline step for an act target: reminder, breach, escalation.",
    "beacon.ack.recorded": "Escalation recorded an acknowledgement and stopped that target's clock.",
    "beacon.delivery.outcome": "One delivery attempt of an alert to one contact, and how it ended.",
    "beacon.milestone.recorded": "An authority recorded a step of the case (emergency measure...).",
    "beacon.transfer.requested": "An authority asked to hand its duty on a case to another.",
    "beacon.milestone.scheduled": "Escalation holds an authority to a milestone's legal deadline.",
    "beacon.milestone.missed": "A milestone's deadline passed: the case was escalated.",
    "beacon.target.transferred": "A case was re-routed to another authority, which must acknowledge.",
    "beacon.target.released": "A target's duty ended: the authority it transferred to acknowledged.",
    "beacon.case.reopened": "A closed case took an operator's input after all, and is open again.",
    "beacon.rulepack.published": "A rule pack version to be in force from its effective time.",
}

# Who writes which topic (service), and who reads which (consumer group; services/runtime.py).
SENDS: dict[str, list[str]] = {
    "intake": [Topics.INPUTS, Topics.RULEPACKS],
    "escalation": [Topics.CASES, Topics.ALERTS],
    "notifier": [Topics.DELIVERIES],
}
RECEIVES: dict[str, list[str]] = {
    "intake-readmodel": [Topics.INPUTS, Topics.CASES, Topics.ALERTS, Topics.DELIVERIES],
    "escalation": [Topics.INPUTS, Topics.DELIVERIES],
    "notifier": [Topics.ALERTS],
}
GROUP_PREFIX = "beacon-"  # Settings.consumer_group_prefix, default


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _channel_id(topic: str) -> str:
    return topic.removeprefix("beacon.")


def _message_id(etype: str) -> str:
    return EVENT_TYPES[etype].__name__


def json_schemas() -> dict[str, Any]:
    """docs/schemas/*.json, by file name."""
    out: dict[str, Any] = {}
    for etype, model in EVENT_TYPES.items():
        schema = model.model_json_schema()
        schema["$id"] = compat.dataschema(etype, SCHEMA_VERSION)
        schema["description"] = SUMMARIES[etype]
        out[f"{etype}.json"] = {"$schema": DRAFT, **schema}
    envelope = Envelope.model_json_schema()
    envelope["description"] = (
        "CloudEvents 1.0 structured-mode envelope. `subject` is the case id (also the Kafka key); "
        "`dataschema` names the JSON Schema of `data`, urn:beacon:schema:<type>:v<N>.")
    out["envelope.json"] = {"$schema": DRAFT, **envelope}
    for name, model in REQUESTS.items():
        out[f"{name}.json"] = {"$schema": DRAFT, **model.model_json_schema()}
    return out


def _event_message(etype: str) -> dict[str, Any]:
    model = EVENT_TYPES[etype]
    envelope = Envelope.model_json_schema()
    props = envelope["properties"]
    props["type"] = {"const": etype, "type": "string"}
    props["dataschema"] = {
        "const": compat.dataschema(etype, SCHEMA_VERSION), "type": "string",
        "description": f"Consumers also accept v{SCHEMA_VERSION - 1} (schemas/compat.py)."}
    pack = etype == "beacon.rulepack.published"
    props["subject"] = {"type": "string",
                        "description": "The pack version." if pack else "The case id."}
    props["data"] = {"$ref": f"#/components/schemas/{model.__name__}"}
    envelope["title"] = f"{etype} envelope"
    envelope.pop("description", None)
    return {
        "name": etype,
        "title": model.__name__,
        "summary": SUMMARIES[etype],
        "contentType": "application/json",
        "payload": envelope,
        "headers": {
            "type": "object",
            "properties": {
                "ce_id": {"type": "string", "description": "The envelope's id."},
                "ce_type": {"const": etype, "type": "string"},
                "content-type": {"const": "application/json", "type": "string"},
            },
        },
        "bindings": {"kafka": {
            "key": {"type": "string", "description": (
                "The pack version: compaction keeps its latest publication." if pack else
                "The case id: one case's events stay in order on one partition.")},
            "bindingVersion": KAFKA_BINDING,
        }},
    }


def _dead_letter_message() -> dict[str, Any]:
    header = {"type": "string"}
    return {
        "name": "dead-letter",
        "title": "Dead letter",
        "summary": "The original record value and key, unchanged; why it was set aside in headers.",
        "payload": {"description": "The bytes of the original record, as received."},
        "headers": {
            "type": "object",
            "required": ["dlq_reason", "dlq_topic", "dlq_partition", "dlq_offset"],
            "properties": {
                "dlq_reason": {**header, "maxLength": 500, "description":
                               "`unparseable: <field: validation message; ...>` or "
                               "`failed N times: <exception class>: <message>`."},
                "dlq_topic": {**header, "description": "The topic it was read from."},
                "dlq_partition": {**header, "description": "Its partition, as a decimal string."},
                "dlq_offset": {**header, "description": "Its offset, as a decimal string."},
            },
        },
        "bindings": {"kafka": {
            "key": {"type": "string", "description": "The original key (the case id)."},
            "bindingVersion": KAFKA_BINDING,
        }},
    }


def asyncapi() -> dict[str, Any]:
    models = [(EVENT_TYPES[t], "validation") for t in sorted(EVENT_TYPES)]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    messages = {_message_id(t): _event_message(t) for t in EVENT_TYPES}
    messages["DeadLetter"] = _dead_letter_message()

    def on(topic: str) -> list[str]:
        return ["DeadLetter"] if topic == Topics.DEADLETTER else [
            _message_id(t) for t in CHANNELS[topic][1]]

    channels = {}
    for topic, (description, _) in CHANNELS.items():
        compacted = topic == Topics.RULEPACKS
        channels[_channel_id(topic)] = {
            "address": topic,
            "description": description,
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in on(topic)},
            "bindings": {"kafka": {
                "topic": topic,
                "partitions": 1 if compacted else PARTITIONS,
                "topicConfiguration": {"cleanup.policy": ["compact" if compacted else "delete"]},
                "bindingVersion": KAFKA_BINDING,
            }},
        }

    def refs(topic: str) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{_channel_id(topic)}/messages/{m}"} for m in on(topic)]

    operations = {}
    for service, topics in SENDS.items():
        for topic in topics:
            operations[f"{service}.send.{_channel_id(topic)}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{_channel_id(topic)}"},
                "messages": refs(topic),
                "summary": f"{service} publishes (acks=all, idempotent producer), keyed by case id.",
            }
    for group, topics in RECEIVES.items():
        binding = {"kafka": {"groupId": {"type": "string", "enum": [GROUP_PREFIX + group]},
                             "bindingVersion": KAFKA_BINDING}}
        for topic in topics:
            operations[f"{group}.receive.{_channel_id(topic)}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{_channel_id(topic)}"},
                "messages": refs(topic),
                "summary": f"Consumer group {GROUP_PREFIX + group}; offsets committed after the "
                           "handler's effects are durable.",
                "bindings": binding,
            }
        operations[f"{group}.send.deadletter"] = {
            "action": "send",
            "channel": {"$ref": "#/channels/deadletter"},
            "messages": refs(Topics.DEADLETTER),
            "summary": f"{GROUP_PREFIX + group} sets aside what it cannot parse or keeps failing on.",
        }

    operations["instances.receive.rulepacks"] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{_channel_id(Topics.RULEPACKS)}"},
        "messages": refs(Topics.RULEPACKS),
        "summary": "Every process reads the whole topic without a consumer group, and puts the "
                   "pack with the latest effective time not in the future in force.",
    }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Beacon events",
            "version": str(SCHEMA_VERSION),
            "description": (
                "Every record is a CloudEvents 1.0 envelope (JSON, structured mode) keyed by case "
                "id. After intake, events carry IDs and codes only: no names, phone numbers or "
                "narrative. Topic names take BEACON_TOPIC_PREFIX in front. See docs/events.md."),
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:9092", "protocol": "kafka",
                              "description": "`make kafka`; BEACON_KAFKA_BOOTSTRAP elsewhere."}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs["$defs"]},
    }


def render() -> dict[str, str]:
    """Every generated file, by path under docs/, as the text to commit."""
    files = {f"{SCHEMAS_DIR}/{name}": _dump(s) for name, s in json_schemas().items()}
    files[ASYNCAPI] = _dump(asyncapi())
    return files


def main() -> None:
    files = render()
    target = DOCS / SCHEMAS_DIR
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.json"):  # a renamed or removed model leaves no stale schema
        if f"{SCHEMAS_DIR}/{old.name}" not in files:
            old.unlink()
    for path, text in files.items():
        (DOCS / path).write_text(text)
    print(f"wrote {len(files)} files under {DOCS.relative_to(ROOT)}/", file=sys.stderr)


if __name__ == "__main__":
    main()
