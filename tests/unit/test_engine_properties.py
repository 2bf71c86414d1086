"""Properties of decide() that hold for any case (hypothesis), on both shipped packs."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vietnam_provinces import Ward

from schemas.decisions import CaseFacts
from schemas.reports import Location
from schemas.rulepack import PUBLICITIES, SEVERITIES
from services.escalation.directory import build_directory
from services.escalation.engine import decide
from services.escalation.rulepack import load_pack

PACKS = {name: load_pack(name) for name in ("default", "vn2020")}
DIRECTORIES = {name: build_directory(pack) for name, pack in PACKS.items()}
RANK = {s: i for i, s in enumerate(SEVERITIES)}
LEVEL = {p: i for i, p in enumerate(PUBLICITIES)}
START = datetime(2026, 1, 1, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
WARDS = sorted(Ward.iter_all(), key=lambda w: int(w.code))[::37]  # ~90 communes, all provinces
SETTINGS_ = ["home", "school", "care_facility", "health_facility", "service_provider", "online",
             "public", "other"]

locations = st.sampled_from(WARDS).map(
    lambda w: Location(province_code=int(w.province_code), commune_code=int(w.code)))
moments = st.integers(0, 365 * 24 * 60).map(lambda m: START + timedelta(minutes=m))


@st.composite
def cases(draw, pack_name: str = "default"):
    pack = PACKS[pack_name]
    first = draw(moments)
    more = draw(st.lists(st.integers(0, 48 * 60), max_size=12))
    return CaseFacts(
        case_id="C-PROP",
        category=draw(st.sampled_from(sorted(pack.category_codes))),
        other_categories=tuple(draw(st.lists(st.sampled_from(sorted(pack.category_codes)),
                                             max_size=2, unique=True))),
        location=draw(locations),
        other_locations=tuple(draw(st.lists(locations, max_size=2))),
        setting=draw(st.sampled_from(SETTINGS_)),
        other_settings=tuple(draw(st.lists(st.sampled_from(SETTINGS_), max_size=2, unique=True))),
        child_ages=tuple(draw(st.lists(st.integers(0, 17), min_size=1, max_size=4))),
        indicators=frozenset(draw(st.sets(st.sampled_from(sorted(pack.indicator_codes)), max_size=5))),
        publicity=draw(st.sampled_from(PUBLICITIES)),
        severity_override=draw(st.none() | st.sampled_from(SEVERITIES)),
        override_basis=draw(st.none() | st.sampled_from(SEVERITIES)),
        linked_reports=(first, *(first + timedelta(minutes=m) for m in more)),
        first_received_at=first,
    )


packs = st.sampled_from(sorted(PACKS))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decide(name, facts, later=0):
    return decide(facts, PACKS[name], DIRECTORIES[name], facts.first_received_at + timedelta(minutes=later))


@FAST
@given(packs, cases())
def test_severity_never_below_the_category_default_unless_overridden(name, facts):
    d = _decide(name, facts)
    if facts.severity_override is not None and facts.override_basis is None:
        assert d.severity == facts.severity_override
    elif facts.severity_override is None:
        for category in (facts.category, *facts.other_categories):  # every report's category
            assert RANK[d.severity] <= RANK[PACKS[name].categories[category].default]


@FAST
@given(packs, cases())
def test_publicity_never_below_what_a_person_set(name, facts):
    assert LEVEL[_decide(name, facts).publicity] >= LEVEL[facts.publicity]


@FAST
@given(packs, cases(), st.sampled_from(PUBLICITIES))
def test_publicity_never_below_the_case_level_so_far_and_never_built_on_it(name, facts, floor):
    # The floor is the case's earlier level: kept as it is, not stepped up like a person's.
    free = _decide(name, facts)
    kept = decide(facts, PACKS[name], DIRECTORIES[name], facts.first_received_at, floor)
    assert kept.publicity == max(free.publicity, floor, key=LEVEL.get)


@FAST
@given(packs, cases())
def test_re_deciding_the_same_facts_never_changes_publicity(name, facts):
    first = _decide(name, facts)
    again = decide(facts, PACKS[name], DIRECTORIES[name], facts.first_received_at, first.publicity)
    assert again.publicity == first.publicity
    assert again.model_dump(mode="json") == first.model_dump(mode="json")


@FAST
@given(packs, cases(), st.integers(0, 10_000))
def test_every_act_target_has_a_deadline_after_the_decision(name, facts, later):
    d = _decide(name, facts, later)
    at = facts.first_received_at + timedelta(minutes=later)
    for t in d.targets:
        if t.role == "act":
            assert t.ack_within and t.ack_due is not None and t.ack_due > at
        else:
            assert t.ack_within is None and t.ack_due is None
        assert t.rules and set(t.rules) <= set(d.matched_rules)


@FAST
@given(packs, cases())
def test_same_input_same_decision(name, facts):
    a = _decide(name, facts)
    rebuilt = CaseFacts.model_validate(facts.model_dump())
    b = decide(rebuilt, PACKS[name], build_directory(PACKS[name]), facts.first_received_at)
    assert a.model_dump(mode="json") == b.model_dump(mode="json")


@FAST
@given(packs, cases())
def test_p5_has_no_targets_and_others_always_have_an_act_target(name, facts):
    d = _decide(name, facts)
    if d.severity == "P5":
        assert d.targets == []
    else:
        assert any(t.role == "act" for t in d.targets)


@FAST
@given(packs, cases())
def test_one_entry_per_authority_and_all_resolve(name, facts):
    d = _decide(name, facts)
    ids = [t.authority_id for t in d.targets]
    assert len(ids) == len(set(ids))
    for t in d.targets:
        authority = DIRECTORIES[name].get(t.authority_id)
        assert (authority.tier, authority.agency) == (t.tier, t.agency)


@FAST
@given(packs, cases(), st.sampled_from(["other_settings", "other_categories"]), st.data())
def test_a_linked_reports_setting_or_category_never_removes_a_target_or_lowers_severity(
        name, facts, field, data):
    codes = SETTINGS_ if field == "other_settings" else sorted(PACKS[name].category_codes)
    code = data.draw(st.sampled_from(codes))
    before = _decide(name, facts)
    after = _decide(name, facts.model_copy(update={field: (*getattr(facts, field), code)}))
    assert {t.authority_id for t in before.targets} <= {t.authority_id for t in after.targets}
    assert RANK[after.severity] <= RANK[before.severity]
    assert LEVEL[after.publicity] >= LEVEL[before.publicity]


@FAST
@given(packs, cases())
def test_more_publicity_never_removes_a_target(name, facts):
    low = _decide(name, facts)
    high = _decide(name, facts.model_copy(update={"publicity": "PA2"}))
    assert {t.authority_id for t in low.targets if t.role == "act"} <= {
        t.authority_id for t in high.targets if t.role == "act"}


@FAST
@given(packs, cases(), st.sampled_from(SEVERITIES), st.sampled_from(SEVERITIES))
def test_an_override_holds_until_the_facts_give_more_than_it_was_made_on(name, facts, override,
                                                                          basis):
    # DOMAIN.md section 2: a supervisor's judgement of earlier facts never hides a legal
    # emergency reported since; facts no more severe than it was made on leave it in force.
    facts = facts.model_copy(update={"severity_override": override, "override_basis": basis})
    d = _decide(name, facts)
    rules = _decide(name, facts.model_copy(update={"severity_override": None})).severity
    # More than it was made on and more than the override itself: rules that rose, but not
    # as high as a supervisor's raise, leave that raise in force.
    if RANK[rules] < min(RANK[basis], RANK[override]):
        assert d.severity == rules and "severity.override_lapsed" in d.matched_rules
    else:
        assert d.severity == facts.severity_override


def _judged(facts, override, name):
    """The facts with an override made on them as they stand, as escalation records one."""
    unjudged = _decide(name, facts.model_copy(update={"severity_override": None})).severity
    return facts.model_copy(update={
        "severity_override": override, "override_basis": unjudged,
        "override_judged": frozenset({facts.category, *facts.other_categories, *facts.indicators})})


def _named_above(pack, facts, override) -> set[str]:
    """Indicators that some rule the case can use, giving more than the override, names."""
    rules = [*pack.global_rules,
             *(r for c in (facts.category, *facts.other_categories) for r in pack.categories[c].raise_)]
    return {i for r in rules if RANK[r.to] < RANK[override] for c in r.when for i in c.any_indicator}


@FAST
@given(packs, cases(), st.sampled_from(SEVERITIES))
def test_an_override_is_in_force_on_the_facts_it_was_made_on(name, facts, override):
    d = _decide(name, _judged(facts, override, name))
    assert d.severity == override and "severity.override" in d.matched_rules


@FAST
@given(packs, cases(), st.sampled_from(SEVERITIES[1:]), st.data())
def test_a_legal_emergency_reported_since_ends_an_override(name, facts, override, data):
    # The 12-hour rule's indicators (DOMAIN.md section 2), reported after a supervisor lowered
    # the case, even on a case that one of them had made P1 before.
    pack = PACKS[name]
    legal = sorted({i for r in pack.global_rules if r.to == "P1" for c in r.when
                    for i in c.any_indicator} - facts.indicators)
    if not legal:
        return
    judged = _judged(facts, override, name)
    later = judged.model_copy(update={
        "indicators": facts.indicators | {data.draw(st.sampled_from(legal))}})
    d = _decide(name, later)
    assert d.severity == "P1" and "severity.override_lapsed" in d.matched_rules


@FAST
@given(packs, cases(), st.sampled_from(SEVERITIES), st.data())
def test_a_fact_no_rule_above_the_override_names_leaves_it(name, facts, override, data):
    pack = PACKS[name]
    quiet = sorted(pack.indicator_codes - facts.indicators - _named_above(pack, facts, override))
    if not quiet:
        return
    later = _judged(facts, override, name).model_copy(update={
        "indicators": facts.indicators | {data.draw(st.sampled_from(quiet))}})
    assert _decide(name, later).severity == override
