"""The committed contract documents under docs/ match the models, and say what the code does."""

import json
import re

import pytest

from schemas.events import EVENT_TYPES, Topics
from services.common.config import Settings
from tools import export_schemas as ex

STALE = "docs/ is stale: run `make docs` and commit the result"


def test_committed_documents_are_current():
    files = ex.render()
    for path, text in files.items():
        on_disk = ex.DOCS / path
        assert on_disk.exists(), f"{path} is missing: {STALE}"
        assert on_disk.read_text() == text, f"{path} differs from the models: {STALE}"
    extra = {f"{ex.SCHEMAS_DIR}/{p.name}" for p in (ex.DOCS / ex.SCHEMAS_DIR).glob("*.json")}
    assert extra <= set(files), f"{sorted(extra - set(files))} no longer generated: {STALE}"


def test_one_schema_per_event_type_and_request():
    names = set(ex.json_schemas())
    assert {f"{t}.json" for t in EVENT_TYPES} <= names
    assert {"envelope.json", "report.json", "case-update.json"} <= names


def test_every_event_type_is_on_exactly_one_topic():
    placed = [t for _, types in ex.CHANNELS.values() for t in types]
    assert sorted(placed) == sorted(EVENT_TYPES)
    assert set(ex.CHANNELS) == set(Topics.ALL)
    assert set(ex.SUMMARIES) == set(EVENT_TYPES)


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_asyncapi_references_resolve():
    doc = ex.asyncapi()
    assert doc["asyncapi"].startswith("3.")
    for ref in set(_refs(doc)):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            assert part in node, f"{ref} does not resolve"
            node = node[part]


def test_asyncapi_receivers_match_the_running_services():
    """The consumer groups and topics the services really subscribe (services/runtime.py)."""
    from services.runtime import SERVICES, build

    rt = build(Settings(secret_key="test", webhook_secret="test", topic_prefix="",
                        consumer_group_prefix="beacon",
                        database_url="sqlite+aiosqlite:///:memory:"),
               frozenset(SERVICES))
    live = {s.group_id: sorted(s.topic_names) for s in rt.broker.subscribers}
    documented = {ex.GROUP_PREFIX + g: sorted(ts) for g, ts in ex.RECEIVES.items()}
    assert live == documented


@pytest.fixture(scope="module")
def events_md() -> str:
    return (ex.DOCS / "events.md").read_text()


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n### ", start + len(heading))
    return text[start:end if end != -1 else None]


@pytest.mark.parametrize("etype", sorted(EVENT_TYPES))
def test_events_md_explains_every_field(events_md, etype):
    section = _section(events_md, f"### `{etype}`")
    missing = [f for f in EVENT_TYPES[etype].model_fields if f"`{f}`" not in section]
    assert not missing, f"docs/events.md, {etype}: say what {missing} mean"


def test_events_md_names_every_topic_and_dead_letter_header(events_md):
    for topic in Topics.ALL:
        assert f"`{topic}`" in events_md
    headers = json.loads((ex.DOCS / ex.ASYNCAPI).read_text())[
        "components"]["messages"]["DeadLetter"]["headers"]["properties"]
    for header in headers:
        assert f"`{header}`" in events_md
    assert re.search(r"urn:beacon:schema:<type>:v<N>", events_md)
