"""Loading and validating rule packs: shipped packs load; broken ones say where and what."""

import re
from pathlib import Path

import pytest

from schemas.rulepack import Deadline, RulePack, parse_clock_duration
from services.escalation.rulepack import (
    SHIPPED,
    RulePackError,
    load_pack,
    parse_pack,
    validate_pack_text,
)

DEFAULT_TEXT = SHIPPED["default"].read_text(encoding="utf-8")
TIERS = """tiers:
  - {id: commune, label: "xã", name: commune}
  - {id: province, label: "tỉnh", name: province}
  - {id: national, label: "trung ương", name: national}"""


def broken(old: str, new: str, count: int = 1) -> str:
    assert old in DEFAULT_TEXT, old
    return DEFAULT_TEXT.replace(old, new, count)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    start = -1
    for _ in range(nth):
        start = text.index(needle, start + 1)
    return text[:start].count("\n") + 1


def problems(text: str) -> list[tuple[str, str]]:
    return validate_pack_text(text, "pack.yaml")


@pytest.mark.parametrize("name", ["default", "vn2020"])
def test_shipped_packs_are_valid(name):
    assert isinstance(load_pack(name), RulePack)  # raises RulePackError, listing each problem


def test_pack_api():
    pack = load_pack("default")
    assert pack.version == "default-2026.5"
    assert pack.tiers == ["commune", "province", "national"]
    assert pack.next_tier("commune") == "province"
    assert pack.next_tier("province") == "national"
    assert pack.next_tier("national") is None
    assert pack.reminder_fractions == [0.5, 0.8]
    assert {"media_local", "media_national", "staff_suspected", "immediate_danger",
            "caregiver_is_abuser", "death", "crime", "serious_injury"} <= pack.indicator_codes
    assert "SEX_ABUSE" in pack.category_codes
    assert pack.subcategories("EMOTIONAL") == frozenset()
    assert set(pack.agencies) >= {"child_protection", "police", "health", "education", "cyber_police"}
    assert [m.id for m in pack.milestones_for("P1")] == ["emergency_measure", "police_verification"]


@pytest.mark.parametrize("name", ["default", "vn2020"])
def test_shipped_packs_name_every_step_in_english(name):
    # English messages named a step by its code (emergency_measure): the pack had no name.
    steps = {m.code: m.name for m in load_pack(name).milestones}
    assert steps["emergency_measure"] == "Emergency protection measure"
    assert all(steps.values()), steps


def test_a_pack_without_english_step_names_still_validates():
    """A pack written before milestones had `name` (an admin's draft, a published one)."""
    head, steps = DEFAULT_TEXT.split("\nmilestones:\n")
    steps = "".join(line for line in steps.splitlines(True) if not line.startswith("    name: "))
    text = head + "\nmilestones:\n" + steps
    assert problems(text) == []
    assert {m.name for m in parse_pack(text, "pack.yaml").milestones} == {None}


@pytest.mark.parametrize("name", ["default", "vn2020"])
def test_shipped_packs_name_every_tier(name):
    """Messages named a tier by the notifier's own table: a pack's new tier read as its id."""
    pack = load_pack(name)
    assert list(pack.tier_names) == pack.tiers
    assert all(t.label and t.name for t in pack.tier_names.values())
    assert (pack.tier_names["commune"].label, pack.tier_names["commune"].name) == ("xã", "commune")


def test_a_pack_of_bare_tier_ids_still_validates_and_names_none():
    """Packs written before tiers had labels (an admin's draft, a published one)."""
    text = broken(TIERS, "tiers: [commune, province, national]")
    assert problems(text) == []
    pack = parse_pack(text, "pack.yaml")
    assert pack.tiers == ["commune", "province", "national"] and pack.tier_names == {}
    mixed = parse_pack(broken(TIERS, 'tiers: [commune, {id: province, label: "tỉnh, thành phố"}, '
                                     "national]"), "pack.yaml")
    assert mixed.tiers == ["commune", "province", "national"]
    assert (mixed.tier_names["province"].label, mixed.tier_names["province"].name) == (
        "tỉnh, thành phố", None)


def test_a_tier_label_is_the_tier_without_cap_and_is_required_with_a_mapping():
    # Messages say "cấp {label}": "Cấp xã" would read "cấp Cấp xã".
    [(place, msg)] = problems(broken('label: "xã"', 'label: "Cấp xã"'))
    assert place == f"pack.yaml:{line_of(DEFAULT_TEXT, '{id: commune')}"
    assert msg.startswith('tiers[0].label: write the tier without "cấp"')
    [(_, msg)] = problems(broken('{id: province, label: "tỉnh", name: province}',
                                 "{id: province, name: province}"))
    assert msg == "tiers[1].label: Field required"


def test_load_by_path(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text(DEFAULT_TEXT.replace("version: default-2026.5", "version: mine-1"), encoding="utf-8")
    assert load_pack(str(path)).version == "mine-1"


def test_missing_file():
    with pytest.raises(RulePackError) as exc:
        load_pack("/nonexistent/pack.yaml")
    assert "cannot read" in exc.value.errors[0][1]


def test_unknown_agency_has_its_line_and_field_path():
    text = broken("{tier: commune, agency: police, role: act, ack: PT15M}",
                  "{tier: commune, agency: polise, role: act, ack: PT15M}")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, 'agency: polise')}"
    assert msg == "routing.P1.PA0[1].agency: unknown agency 'polise'"


def test_unknown_tier():
    text = broken("{tier: province, agency: cyber_police", "{tier: provnce, agency: cyber_police")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, 'provnce')}"
    assert "unknown tier 'provnce'" in msg and msg.startswith("additions[1].add[0].tier")


def test_unknown_indicator_and_category_in_conditions():
    text = broken("when: {category_in: [ONLINE_ABUSE]}", "when: {category_in: [ONLINE_ABUZE]}")
    text = text.replace("[sextortion, meeting_arranged]", "[sextortion, meeting]")
    found = {msg.split(": ")[0]: (place, msg) for place, msg in problems(text)}
    assert found["categories.ONLINE_ABUSE.raise[0].when[0].any_indicator[1]"][0] == \
        f"pack.yaml:{line_of(text, '[sextortion, meeting]')}"
    assert found["additions[1].when[0].category_in[0]"][0] == f"pack.yaml:{line_of(text, 'ONLINE_ABUZE')}"


def test_a_severity_deadline_the_matrix_or_milestones_do_not_share_is_refused():
    # Not silently ignored: the matrix routes acknowledgements, the milestones time the acts.
    text = broken("acknowledge: PT15M", "acknowledge: PT20M")
    text = text.replace("act: PT12H ", "act: PT13H ", 1)
    found = {msg.split(": ")[0]: (place, msg) for place, msg in problems(text)}
    place, msg = found["severities.P1.acknowledge"]
    assert place == f"pack.yaml:{line_of(text, 'acknowledge: PT20M')}"
    assert "PT20M is not an act deadline of the matrix's P1/PA0 cell (PT15M)" in msg
    place, msg = found["severities.P1.act"]
    assert place == f"pack.yaml:{line_of(text, 'act: PT13H')}"
    assert "PT13H is not the deadline of a P1 milestone" in msg and "PT12H" in msg


def test_bad_duration():
    text = broken("ack: PT15M}", "ack: PT15X}")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, 'PT15X')}"
    assert msg.startswith("routing.P1.PA0[0].ack: ") and "ISO-8601" in msg


@pytest.mark.parametrize("old,new,where,what", [
    ("    within: PT12H\n    start: first_receipt", "    within: PT0H\n    start: first_receipt",
     "milestones[0].within: ", "longer than zero"),  # the place was milestones[0].within.within
    ("ack: PT15M}", "ack: P99999D}", "routing.P1.PA0[0].ack: ", "more than a year"),
    ("window: PT24H", "window: PT0S", "publicity.correlated_reports.window: ", "longer than zero"),
    ("at_least: 10, to: PA2}", "at_least: 10, to: PA0}", "publicity.correlated_reports: ",
     "at least 10 reports give PA0, less than PA1 for 3"),
])
def test_values_no_one_means(old, new, where, what):
    [(_, msg)] = problems(broken(old, new))
    assert msg.startswith(where) and what in msg, msg


def test_missing_matrix_cell():
    text = broken("  P5: {PA0: [], PA1: [], PA2: []}", "  P5: {PA0: [], PA1: []}")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, '  P5: {PA0')}"
    assert msg == "routing.P5: routing cell P5 x PA2 is missing"


def test_unknown_severity_and_publicity_keys():
    text = broken("  P5: {PA0: [], PA1: [], PA2: []}", "  P5: {PA0: [], PA1: [], PA3: []}")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, 'PA3')}" and "routing.P5.PA3" in msg


def test_duplicated_key_is_reported_with_its_line():
    line = '  HAZARD: {label: "Môi trường không an toàn", name: "Unsafe environment", default: P4}'
    text = broken(line, line + '\n'
                  '  HAZARD: {label: "again", default: P4}')
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, 'HAZARD', 2)}"
    assert msg == "categories.HAZARD: 'HAZARD' is given twice"


def test_duplicated_rule_id_tier_and_subcategory():
    text = broken("id: additions.online_abuse.cyber_police", "id: additions.sex_abuse.commune_health")
    text = text.replace(TIERS, "tiers: [commune, province, national, province]")
    text = text.replace("[drowning, traffic,", "[drowning, drowning, traffic,")
    msgs = [msg for _, msg in problems(text)]
    assert any("rule id 'additions.sex_abuse.commune_health' is used twice" in m for m in msgs)
    assert "tiers[3]: tier 'province' is listed twice" in msgs
    assert any("subcategory 'drowning' is listed twice" in m for m in msgs)


def test_tiers_the_directory_cannot_place_or_climb():
    """Published, either stopped all routing: every report failed and was dead-lettered."""
    reversed_ = [msg for _, msg in problems(broken(TIERS, "tiers: [national, province, commune]"))]
    assert reversed_ == [
        "tiers[1]: tier 'province' is smaller than 'national' before it; list tiers lowest first "
        "(commune, district, province, national)",
        "tiers[2]: tier 'commune' is smaller than 'province' before it; list tiers lowest first "
        "(commune, district, province, national)"]
    unknown = [msg for _, msg in problems(broken(TIERS, "tiers: [commune, region, province, national]"))]
    assert unknown == ["tiers[1]: the directory cannot place tier 'region' "
                       "(it places commune, district, province, national)"]


def test_act_without_deadline_and_inform_with_one():
    text = broken("{tier: commune, agency: police, role: act, ack: PT15M}",
                  "{tier: commune, agency: police, role: act}")
    text = text.replace("{tier: national, agency: child_protection, role: inform}",
                        "{tier: national, agency: child_protection, role: inform, ack: PT1H}", 1)
    msgs = [msg for _, msg in problems(text)]
    assert "routing.P1.PA0[1]: an act target needs an ack deadline" in msgs
    assert "routing.P1.PA1[1]: an inform target has no ack deadline" in msgs


def test_missing_field_points_at_its_parent():
    text = broken("  EMOTIONAL: {label: \"Bạo lực tinh thần\", name: \"Emotional abuse\", default: P3}",
                  "  EMOTIONAL: {label: \"Bạo lực tinh thần\"}")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, '  EMOTIONAL:')}"
    assert msg.startswith("categories.EMOTIONAL.default")


def test_no_code_in_conditions():
    text = broken("when: {age_below: 12}", "when: {python: \"child.age < 12\"}")
    [(_place, msg)] = problems(text)
    assert "categories.MISSING.raise[0].when[0].python" in msg and "Extra inputs" in msg


def test_yaml_syntax_error_has_its_line():
    text = broken(TIERS, "tiers: [commune, province")
    [(place, msg)] = problems(text)
    assert re.fullmatch(r"pack\.yaml:\d+", place) and "not valid YAML" in msg


def test_not_a_mapping():
    assert problems("- just\n- a list\n") == [("pack.yaml:1", "a rule pack is a YAML mapping")]


def test_several_errors_are_all_reported():
    text = broken("agency: police, role: act, ack: PT15M}", "agency: polise, role: act, ack: PT15M}")
    text = text.replace("agency: cyber_police, role: act", "agency: cyber, role: act")
    text = text.replace("supervisor_agency: people_committee", "supervisor_agency: committee")
    assert len(problems(text)) == 3


def test_parse_pack_raises_with_places():
    with pytest.raises(RulePackError) as exc:
        parse_pack(broken("tier: commune, agency: health", "tier: village, agency: health"), "upload")
    [(place, msg)] = exc.value.errors
    assert place.startswith("upload:") and "unknown tier 'village'" in msg


def test_field_path_when_no_line_is_known():
    # Built from data, not YAML: places fall back to field paths.
    from services.escalation.rulepack import check_references
    pack = load_pack("default")
    data = pack.model_dump(by_alias=True)
    data["routing"]["P1"]["PA0"][0]["agency"] = "nobody"
    found = check_references(RulePack.model_validate(data))
    assert found == [(("routing", "P1", "PA0", 0, "agency"), "unknown agency 'nobody'")]


@pytest.mark.parametrize(("text", "ok"), [
    ("PT15M", True), ("PT2H", True), ("P1D", True), ("P1DT12H", True), ("P2W", True),
    ("P1M", False), ("P1Y", False), ("PT", False), ("P", False), ("15 minutes", False),
    ("pt15m", False),
])
def test_durations(text, ok):
    if ok:
        parse_clock_duration(text)
    else:
        with pytest.raises(ValueError):
            parse_clock_duration(text)


def test_deadline_forms():
    assert Deadline.model_validate("PT15M").iso == "PT15M"
    wd = Deadline.model_validate({"working_days": 3})
    assert (wd.iso, wd.is_working_days) == ("P3D", True)
    with pytest.raises(ValueError):
        Deadline.model_validate({"within": "PT1H", "working_days": 1})
    with pytest.raises(ValueError):
        Deadline.model_validate("PT0M")


def test_yaml_aliases_are_refused_with_their_line():
    # A "billion laughs": nine levels of aliases, under 1 KB, would expand to 9**9 strings.
    bomb = 'a0: &a0 ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10))
    assert len(bomb) < 1024
    [(place, msg)] = problems(bomb)
    assert place == "pack.yaml:2" and "aliases" in msg


def test_a_raise_rule_that_would_not_raise_is_refused():
    # MISSING defaults to P2: a rule "raising" it to P4 would silently do nothing.
    text = broken("{id: MISSING.raise.P1.age_below_12, to: P1,",
                  "{id: MISSING.raise.P1.age_below_12, to: P4,")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, 'to: P4')}"
    assert "categories.MISSING.raise[0].to" in msg and "not above the category's default P2" in msg


@pytest.mark.parametrize("version", ["../../x y/ä", "a/b", " lead", "-dash"])
def test_a_version_that_cannot_name_the_pack_in_a_url_is_refused(version):
    [(_place, msg)] = problems(broken("version: default-2026.5", f'version: "{version}"'))
    assert msg.startswith("version:")


def test_a_day_both_off_and_worked_is_refused_with_its_place():
    text = broken("  working_days: [2026-01-10]", "  working_days: [2026-01-10, 2026-01-02]")
    [(place, msg)] = problems(text)
    assert place == f"pack.yaml:{line_of(text, 'calendar:')}" and "2026-01-02" in msg


@pytest.mark.parametrize("hours", ['[07:30, 17:00]', '["17:00", "07:30"]', '["7h30", "17h"]'])
def test_office_hours_must_be_two_quoted_times_in_order(hours):
    """YAML reads an unquoted 17:00 as 1020, which would pass as 00:17."""
    text = broken('  office_hours: ["07:30", "17:00"]', f"  office_hours: {hours}")
    [(place, msg)] = problems(text)
    assert place in {f"pack.yaml:{line_of(text, n)}" for n in ("calendar:", "office_hours:")}
    assert "office_hours" in msg
