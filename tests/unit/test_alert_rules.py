"""The alerting rules shipped in docs/prometheus/beacon-rules.yml watch what Beacon exports: a
metric renamed or a label misspelt would leave a rule matching nothing, silently. (promtool
checks the PromQL itself; it is not needed here.)"""

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from services.common import metrics

RULES = Path(__file__).resolve().parents[2] / "docs" / "prometheus" / "beacon-rules.yml"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
PROMETHEUS_OWN = {"up"}  # a series Prometheus makes for each scrape target
TARGET_LABELS = {"job", "instance", "le"}  # added by the scrape; `le`, a histogram's buckets
SEVERITIES = {"critical", "warning"}


def exported() -> dict[str, set[str]]:
    """Each series name Beacon's metrics module exports, with the labels it may carry."""
    labels = {m._name: set(m._labelnames)  # prometheus_client keeps them on the wrapper only
              for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}
    names: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if family.name in labels:  # the family's name, less a counter's _total
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = labels[family.name]
    return names


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def test_the_module_s_metrics_are_all_found():
    names = exported()
    assert {"beacon_timers_overdue_oldest_seconds", "beacon_consumer_lag",
            "beacon_dead_letters_total", "beacon_decision_seconds_bucket"} <= names.keys()


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_each_rule_watches_exported_metrics_by_their_labels(rule):
    names = exported()
    expr = rule["expr"]
    used = set(re.findall(r"\bbeacon_[a-z0-9_]+|\bup(?=\{)", expr))
    assert used, f"no metric in {expr!r}"
    assert used <= names.keys() | PROMETHEUS_OWN, f"not exported: {used - names.keys()}"
    allowed = TARGET_LABELS.union(*(names.get(name, set()) for name in used))
    for name, matchers in re.findall(r"\b(beacon_[a-z0-9_]+|up)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in names.get(name, TARGET_LABELS), f"{name} has no label {label!r}"
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in allowed, f"no metric of {expr!r} has the label {label!r}"


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["alert"])
def test_each_rule_has_a_severity_a_summary_a_description_and_a_for(rule):
    assert re.fullmatch(r"Beacon[A-Za-z]+", rule["alert"])
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()
    assert re.fullmatch(r"\d+[smh]", rule["for"]), "a `for:` keeps a blip from paging"


def test_alert_names_are_unique():
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("name", "labels"), [
    *[("beacon_decisions_total", {"severity": s}) for s in ("P1", "P2", "P3", "P4", "P5")],
    ("beacon_reports_accepted_total", {"new_case": "true"}),
    ("beacon_reports_accepted_total", {"new_case": "false"})])
def test_the_counters_a_rule_compares_exist_before_their_first_event(name, labels):
    """A series that first appears at 1 has an increase() of 0: the first decisions after a
    restart looked like none, and BeaconDecisionsStalled paged."""
    assert REGISTRY.get_sample_value(name, labels) is not None
