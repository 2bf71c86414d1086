"""Load and validate rule packs (YAML -> schemas.rulepack.RulePack), with every error's place.

A place is "file:line" when the YAML line is known, else a field path such as
`routing.P1.PA0[0].agency`. Checks run in three passes, each reporting all it finds: YAML syntax
and duplicate keys, the pydantic model, then cross-references between parts of the pack.
"""

from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import yaml
from pydantic import ValidationError

from schemas.rulepack import PUBLICITIES, SEVERITIES, Condition, RulePack, TargetSpec
from services.escalation.directory import TIER_KINDS

PACKS_DIR = Path(__file__).parent / "packs"
SHIPPED = {"default": PACKS_DIR / "default.yaml", "vn2020": PACKS_DIR / "vn2020.yaml"}

Path_ = tuple[str | int, ...]
Problem = tuple[str, str]  # (place, message)


class RulePackError(ValueError):
    def __init__(self, errors: list[Problem]):
        self.errors = errors
        super().__init__("; ".join(f"{place}: {msg}" for place, msg in errors))


# --- YAML with line numbers -------------------------------------------------------------------


class _PackLoader(yaml.SafeLoader):
    """YAML without aliases: a few lines of them expand exponentially (a "billion laughs"),
    which stalled the API's event loop for seconds, and a pack has no need of them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a rule pack: write it out",
                self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _read_yaml(text: str) -> tuple[object, dict[Path_, int], list[tuple[Path_, int, str]]]:
    """Parse YAML into plain data, the line of every path, and duplicate-key problems."""
    loader = _PackLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {(): node.start_mark.line + 1}
    duplicates: list[tuple[Path_, int, str]] = []
    _walk(node, (), lines, duplicates)
    return data, lines, duplicates


def _walk(node: yaml.Node, path: Path_, lines: dict, duplicates: list) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[object] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                duplicates.append((path + (key,), key_node.start_mark.line + 1, key))
            seen.add(key)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, path + (key,), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, duplicates)


def field_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(pack)"


class _Places:
    """Turns a field path into `file:line` (the nearest known line) plus the path itself."""

    def __init__(self, source: str, lines: dict[Path_, int]):
        self.source, self.lines = source, lines

    def place(self, path: Path_) -> str:
        for cut in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:cut]))
            if line is not None and self.lines:
                return f"{self.source}:{line}"
        return field_path(path)

    def problem(self, path: Path_, message: str) -> Problem:
        where = field_path(path)
        return (self.place(path), message if where == "(pack)" else f"{where}: {message}")


def _clean_loc(loc: tuple) -> Path_:
    # Pydantic adds validator names (e.g. "function-after[...]") to union locations: drop them.
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and "-" not in p))


# --- cross-reference checks -------------------------------------------------------------------


def _conditions(pack: RulePack) -> Iterator[tuple[Path_, Condition]]:
    for code, cat in pack.categories.items():
        for i, rule in enumerate(cat.raise_):
            for j, cond in enumerate(rule.when):
                yield ("categories", code, "raise", i, "when", j), cond
    for i, rule in enumerate(pack.global_rules):
        for j, cond in enumerate(rule.when):
            yield ("global_rules", i, "when", j), cond
    for i, rule in enumerate(pack.publicity.indicator_rules):
        for j, cond in enumerate(rule.when):
            yield ("publicity", "indicator_rules", i, "when", j), cond
    for i, rule in enumerate(pack.publicity.step_up):
        for j, cond in enumerate(rule.when):
            yield ("publicity", "step_up", i, "when", j), cond
    for i, add in enumerate(pack.additions):
        for j, cond in enumerate(add.when):
            yield ("additions", i, "when", j), cond
    for i, ms in enumerate(pack.milestones):
        for j, cond in enumerate(ms.when):
            yield ("milestones", i, "when", j), cond


def _target_specs(pack: RulePack) -> Iterator[tuple[Path_, TargetSpec]]:
    for sev, row in pack.routing.items():
        for pub, cell in row.items():
            for i, spec in enumerate(cell):
                yield ("routing", sev, pub, i), spec
    for i, add in enumerate(pack.additions):
        for j, spec in enumerate(add.add):
            yield ("additions", i, "add", j), spec


def _rule_ids(pack: RulePack) -> Iterator[tuple[Path_, str]]:
    for code, cat in pack.categories.items():
        for i, rule in enumerate(cat.raise_):
            yield ("categories", code, "raise", i, "id"), rule.id
    for name in ("global_rules", "additions", "milestones"):
        for i, rule in enumerate(getattr(pack, name)):
            yield (name, i, "id"), rule.id
    for name in ("indicator_rules", "step_up"):
        for i, rule in enumerate(getattr(pack.publicity, name)):
            yield ("publicity", name, i, "id"), rule.id
    for i, th in enumerate(pack.publicity.correlated_reports.thresholds):
        yield ("publicity", "correlated_reports", "thresholds", i, "id"), th.id


def _duplicates(items: list) -> list[int]:
    seen: set = set()
    dup = []
    for i, item in enumerate(items):
        if item in seen:
            dup.append(i)
        seen.add(item)
    return dup


def _deadline(d) -> str:
    return d.within or f"{d.working_days} working day(s)"


def check_references(pack: RulePack) -> list[tuple[Path_, str]]:
    """Semantic problems the model alone cannot see, as (field path, message)."""
    out: list[tuple[Path_, str]] = []
    tiers, agencies = set(pack.tiers), set(pack.agencies)

    for i in _duplicates(pack.tiers):
        out.append((("tiers", i), f"tier {pack.tiers[i]!r} is listed twice"))
    # The directory finds each tier's authority from the place of the incident, and a breach
    # climbs the list: a tier it cannot place, or one listed below a smaller one, stops routing.
    for i, tier in enumerate(pack.tiers):
        if tier not in TIER_KINDS:
            out.append((("tiers", i), f"the directory cannot place tier {tier!r} "
                                      f"(it places {', '.join(TIER_KINDS)})"))
        elif i and pack.tiers[i - 1] in TIER_KINDS and (
                TIER_KINDS.index(pack.tiers[i - 1]) > TIER_KINDS.index(tier)):
            out.append((("tiers", i), f"tier {tier!r} is smaller than {pack.tiers[i - 1]!r} "
                                      f"before it; list tiers lowest first ({', '.join(TIER_KINDS)})"))
    for code, cat in pack.categories.items():
        for i in _duplicates(cat.subcategories):
            out.append((("categories", code, "subcategories", i),
                        f"subcategory {cat.subcategories[i]!r} is listed twice"))
        for i, rule in enumerate(cat.raise_):  # a raise rule never lowers: this one would do nothing
            if SEVERITIES.index(rule.to) >= SEVERITIES.index(cat.default):
                out.append((("categories", code, "raise", i, "to"),
                            f"{rule.to} is not above the category's default {cat.default}"))
    ids = list(_rule_ids(pack))
    seen: dict[str, Path_] = {}
    for path, rule_id in ids:
        if rule_id in seen:
            out.append((path, f"rule id {rule_id!r} is used twice (first at {field_path(seen[rule_id])})"))
        seen.setdefault(rule_id, path)

    for sev in SEVERITIES:
        if sev not in pack.severities:
            out.append((("severities",), f"severity {sev} is missing"))
        row = pack.routing.get(sev)
        if row is None:
            out.append((("routing",), f"routing row {sev} is missing"))
            continue
        for pub in PUBLICITIES:
            if pub not in row:
                out.append((("routing", sev), f"routing cell {sev} x {pub} is missing"))
    for sev, level in pack.severities.items():
        if not level.alert and any(pack.routing.get(sev, {}).values()):
            out.append((("routing", sev), f"{sev} alerts nobody (alert: false) but routes targets"))

    for path, spec in _target_specs(pack):
        if spec.tier not in tiers:
            out.append((path + ("tier",), f"unknown tier {spec.tier!r} (tiers: {', '.join(pack.tiers)})"))
        if spec.agency not in agencies:
            out.append((path + ("agency",), f"unknown agency {spec.agency!r}"))
        if spec.ack_same_as is not None:
            if spec.ack_same_as.tier not in tiers:
                out.append((path + ("ack_same_as", "tier"), f"unknown tier {spec.ack_same_as.tier!r}"))
            if spec.ack_same_as.agency not in agencies:
                out.append((path + ("ack_same_as", "agency"),
                            f"unknown agency {spec.ack_same_as.agency!r}"))
    for i, add in enumerate(pack.additions):
        if add.mirror is not None:
            for key in ("of", "agency"):
                if getattr(add.mirror, key) not in agencies:
                    out.append((("additions", i, "mirror", key),
                                f"unknown agency {getattr(add.mirror, key)!r}"))
        for j, tier in enumerate(add.also_at_other_locations):
            if tier not in tiers:
                out.append((("additions", i, "also_at_other_locations", j), f"unknown tier {tier!r}"))

    for path, cond in _conditions(pack):
        for j, code in enumerate(cond.any_indicator):
            if code not in pack.indicators:
                out.append((path + ("any_indicator", j), f"unknown indicator {code!r}"))
        for j, code in enumerate(cond.category_in):
            if code not in pack.categories:
                out.append((path + ("category_in", j), f"unknown category {code!r}"))

    # The severity table's deadlines restate DOMAIN's taxonomy; the matrix and the milestones
    # are what route and time a case. An edit to one that the other does not share is refused,
    # not silently ignored.
    for code, level in pack.severities.items():
        acks = [spec.ack for _, spec in pack.cell_targets(code, "PA0")
                if spec.role == "act" and spec.ack is not None]
        if level.acknowledge is not None and level.acknowledge not in acks:
            out.append((("severities", code, "acknowledge"),
                        f"{_deadline(level.acknowledge)} is not an act deadline of the matrix's "
                        f"{code}/PA0 cell ({', '.join(dict.fromkeys(map(_deadline, acks))) or 'none'}): "
                        "acknowledgement deadlines come from the matrix; change them there"))
        steps = [m.within for m in pack.milestones_for(code)]
        if level.act is not None and level.act not in steps:
            out.append((("severities", code, "act"),
                        f"{_deadline(level.act)} is not the deadline of a {code} milestone "
                        f"({', '.join(dict.fromkeys(map(_deadline, steps))) or 'none'}): "
                        "deadlines to act come from the milestones; change them there"))

    if pack.escalation.supervisor_agency not in agencies:
        out.append((("escalation", "supervisor_agency"),
                    f"unknown agency {pack.escalation.supervisor_agency!r}"))
    thresholds = [t.at_least for t in pack.publicity.correlated_reports.thresholds]
    for i in _duplicates(thresholds):
        out.append((("publicity", "correlated_reports", "thresholds", i, "at_least"),
                    f"threshold {thresholds[i]} is given twice"))

    try:
        ZoneInfo(pack.calendar.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        out.append((("calendar", "timezone"), f"unknown time zone {pack.calendar.timezone!r}"))
    if pack.calendar.holidays_country not in holidays.list_supported_countries():
        out.append((("calendar", "holidays_country"),
                    f"no holiday calendar for {pack.calendar.holidays_country!r}"))
    return out


# --- public API ----------------------------------------------------------------------------


def _validate_text(text: str, source: str) -> tuple[RulePack | None, list[Problem]]:
    try:
        data, lines, duplicates = _read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f"{source}:{mark.line + 1}" if mark is not None else source
        return None, [(place, f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]
    places = _Places(source, lines)
    problems = [
        (f"{source}:{line}", f"{field_path(path)}: {key!r} is given twice")
        for path, line, key in duplicates
    ]
    if not isinstance(data, dict):
        return None, problems + [(f"{source}:1", "a rule pack is a YAML mapping")]
    try:
        pack = RulePack.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(places.problem(_clean_loc(err["loc"]), msg))
        return None, problems
    problems += [places.problem(path, msg) for path, msg in check_references(pack)]
    return (pack if not problems else None), problems


def _resolve(path_or_name: str) -> Path:
    return SHIPPED.get(path_or_name, Path(path_or_name))


def validate_pack_text(text: str, source: str = "<pack>") -> list[Problem]:
    return _validate_text(text, source)[1]


def parse_pack(text: str, source: str = "<pack>") -> RulePack:
    """A pack from YAML text (an admin's upload, say); RulePackError lists every problem."""
    pack, problems = _validate_text(text, source)
    if problems or pack is None:
        raise RulePackError(problems)
    return pack


def load_pack(path_or_name: str) -> RulePack:
    """`default`, `vn2020` or a path to a YAML pack."""
    path = _resolve(path_or_name)
    return parse_pack(_read(path), str(path))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulePackError([(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise RulePackError([(str(path), f"not UTF-8 text (byte {exc.start}): save the pack "
                                         "as UTF-8")]) from None
