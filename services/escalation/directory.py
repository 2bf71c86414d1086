"""The authority directory: (tier, agency, administrative unit) -> Authority, generated as data.

Units come from vietnam-provinces (34 provinces, 3321 communes, post-2025). Authorities are made on
first use and cached, so building the directory costs only indexing the units (a few ms).
Every generated contact is a demo contact (demo=True) pointing at the local receivers.

Supervisor chain: an officer answers to the People's Committee of the same unit (the pack's
`escalation.supervisor_agency`); the committee itself, and the national tier, have none in this
model (their breach climbs to the parent). Parent: the same agency one tier up.

District tier (the 2020 pack): vietnam-provinces has no districts after 1 July 2025, so the
directory makes synthetic districts: each province's communes in code order, grouped by
`communes_per_district` (5 gives about 700 districts, close to the 696 of early 2025). Old codes
were numbered district by district, so neighbours in code order were mostly neighbours on the map;
the grouping is a stand-in, not the real 2020 boundaries (docs/rules.md).
"""

from collections.abc import Iterator
from dataclasses import dataclass

from vietnam_provinces import Province, Ward

from schemas.directory import Authority, Contact, authority_id
from schemas.reports import Location
from schemas.rulepack import RulePack

NATIONAL_UNIT = "VN"
TIER_KINDS = ("commune", "district", "province", "national")  # the tiers the directory can place


@dataclass(frozen=True)
class _Unit:
    name: str
    province: str  # province code as text; "VN" for the country
    number: int  # for demo phone numbers


class AdminUnits:
    """Administrative units by tier kind, indexed from vietnam-provinces (in memory)."""

    def __init__(self, communes_per_district: int = 5):
        self.by_kind: dict[str, dict[str, _Unit]] = {k: {} for k in TIER_KINDS}
        self.district_of: dict[str, str] = {}
        self.by_kind["national"][NATIONAL_UNIT] = _Unit("Trung ương", NATIONAL_UNIT, 0)
        wards_by_province: dict[str, list[Ward]] = {}
        for p in Province.iter_all():
            code = str(int(p.code))
            self.by_kind["province"][code] = _Unit(p.name, code, int(p.code))
            wards_by_province[code] = []
        for w in Ward.iter_all():
            wards_by_province[str(int(w.province_code))].append(w)
        for pcode, wards in wards_by_province.items():
            wards.sort(key=lambda w: int(w.code))
            for i, w in enumerate(wards):
                ccode = str(int(w.code))
                self.by_kind["commune"][ccode] = _Unit(w.name, pcode, int(w.code))
                n = i // communes_per_district + 1
                dcode = f"{pcode}-{n:02d}"
                self.district_of[ccode] = dcode
                if dcode not in self.by_kind["district"]:
                    name = f"Cấp huyện mô phỏng {n:02d}, {self.by_kind['province'][pcode].name}"
                    self.by_kind["district"][dcode] = _Unit(name, pcode, int(pcode) * 100 + n)

    def unit_for(self, kind: str, location: Location) -> str:
        """The unit of `kind` that holds the location; KeyError for an unknown or mismatched one."""
        commune = str(location.commune_code)
        unit = self.by_kind["commune"].get(commune)
        if unit is None:
            raise KeyError(f"unknown commune {location.commune_code}")
        if unit.province != str(location.province_code):
            raise KeyError(f"commune {location.commune_code} is not in province {location.province_code}")
        if kind == "commune":
            return commune
        if kind == "district":
            return self.district_of[commune]
        if kind == "province":
            return unit.province
        if kind == "national":
            return NATIONAL_UNIT
        raise KeyError(f"the directory cannot place tier {kind!r}")

    def above(self, kind: str, code: str, kind_up: str) -> str:
        """The unit of `kind_up` that holds unit `code` of `kind`."""
        if kind_up == "national":
            return NATIONAL_UNIT
        if kind_up == "province":
            return self.by_kind[kind][code].province
        if kind_up == "district" and kind == "commune":
            return self.district_of[code]
        raise KeyError(f"no {kind_up} above {kind} {code}")


_UNITS: dict[int, AdminUnits] = {}


def admin_units(communes_per_district: int = 5) -> AdminUnits:
    if communes_per_district not in _UNITS:  # the same for every pack: index once per process
        _UNITS[communes_per_district] = AdminUnits(communes_per_district)
    return _UNITS[communes_per_district]


class Directory:
    def __init__(
        self,
        tiers: list[str],
        agency_labels: dict[str, str],
        supervisor_agency: str | None,
        units: AdminUnits,
        webhook_base: str,
        sms_number_prefix: str,
        mail_domain: str,
    ):
        unknown = [t for t in tiers if t not in TIER_KINDS]
        if unknown:
            raise ValueError(f"the directory cannot place tiers {unknown} (known: {TIER_KINDS})")
        self.tiers = list(tiers)
        self.agency_labels = dict(agency_labels)
        self.agencies = list(agency_labels)
        self.supervisor_agency = supervisor_agency if supervisor_agency in agency_labels else None
        self.units = units
        self.webhook_base = webhook_base.rstrip("/")
        self.sms_number_prefix = sms_number_prefix
        self.mail_domain = mail_domain
        self._cache: dict[str, Authority] = {}
        self._ids: dict[tuple[str, str, int, int], str] = {}

    # --- lookups -----------------------------------------------------------------------------

    def id_for(self, tier: str, agency: str, location: Location) -> str:
        """The authority id for (tier, agency) at a location, without building the Authority."""
        key = (tier, agency, location.province_code, location.commune_code)
        found = self._ids.get(key)
        if found is None:
            if tier not in self.tiers:
                raise KeyError(f"unknown tier {tier!r}")
            if agency not in self.agency_labels:
                raise KeyError(f"unknown agency {agency!r}")
            found = authority_id(tier, self.units.unit_for(tier, location), agency)
            self._ids[key] = found
        return found

    def resolve(self, tier: str, agency: str, location: Location) -> Authority:
        return self.get(self.id_for(tier, agency, location))

    def get(self, authority_id_: str) -> Authority:
        found = self._cache.get(authority_id_)
        if found is None:
            found = self._build(*self._parse(authority_id_))
            self._cache[authority_id_] = found
        return found

    def __contains__(self, authority_id_: object) -> bool:
        if not isinstance(authority_id_, str):
            return False
        try:
            self._parse(authority_id_)
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.agencies) * sum(len(self.units.by_kind[t]) for t in self.tiers)

    def ids(self) -> Iterator[str]:
        for tier in self.tiers:
            for unit in self.units.by_kind[tier]:
                for agency in self.agencies:
                    yield authority_id(tier, unit, agency)

    # --- the chain ---------------------------------------------------------------------------

    def parent_id(self, tier: str, unit: str, agency: str) -> str | None:
        i = self.tiers.index(tier)
        if i + 1 >= len(self.tiers):
            return None
        up = self.tiers[i + 1]
        return authority_id(up, self.units.above(tier, unit, up), agency)

    def supervisor_ids(self, tier: str, unit: str, agency: str) -> list[str]:
        if self.supervisor_agency is None or agency == self.supervisor_agency or tier == "national":
            return []
        return [authority_id(tier, unit, self.supervisor_agency)]

    # --- building ----------------------------------------------------------------------------

    def _parse(self, authority_id_: str) -> tuple[str, str, str]:
        parts = authority_id_.split(":")
        if len(parts) != 3:
            raise KeyError(authority_id_)
        tier, unit, agency = parts
        if tier not in self.tiers or agency not in self.agency_labels or unit not in self.units.by_kind[tier]:
            raise KeyError(authority_id_)
        return tier, unit, agency

    def _build(self, tier: str, unit: str, agency: str) -> Authority:
        aid = authority_id(tier, unit, agency)
        u = self.units.by_kind[tier][unit]
        number = (
            f"{self.sms_number_prefix}{self.tiers.index(tier)}"
            f"{self.agencies.index(agency):02d}{u.number:05d}"
        )
        return Authority(
            id=aid,
            name=f"{self.agency_labels[agency]} – {u.name}",
            tier=tier,
            agency=agency,
            unit_code=unit,
            contacts=[
                Contact(channel="webhook", address=f"{self.webhook_base}/hooks/{aid}", demo=True),
                Contact(channel="email", address=f"{aid.replace(':', '.')}@{self.mail_domain}", demo=True),
                Contact(channel="sms", address=number, demo=True),
            ],
            supervisors=self.supervisor_ids(tier, unit, agency),
            parent=self.parent_id(tier, unit, agency),
        )


def build_directory(
    pack: RulePack,
    webhook_base: str = "http://127.0.0.1:8025",
    sms_number_prefix: str = "+8400000",
    mail_domain: str = "demo.beacon.invalid",
    communes_per_district: int = 5,
) -> Directory:
    """The demo directory for every province and commune, with the pack's tiers and agencies."""
    return Directory(
        tiers=pack.tiers,
        agency_labels={code: a.label for code, a in pack.agencies.items()},
        supervisor_agency=pack.escalation.supervisor_agency,
        units=admin_units(communes_per_district),
        webhook_base=webhook_base,
        sms_number_prefix=sms_number_prefix,
        mail_domain=mail_domain,
    )


def routable_pairs(pack: RulePack) -> set[tuple[str, str]]:
    """Every (tier, agency) the pack can route to, mirrors included."""
    pairs = {(s.tier, s.agency) for row in pack.routing.values() for cell in row.values() for s in cell}
    pairs |= {(s.tier, s.agency) for add in pack.additions for s in add.add}
    for add in pack.additions:
        if add.mirror is not None:
            pairs |= {(t, add.mirror.agency) for t, a in set(pairs) if a == add.mirror.of}
    return pairs


def validate_directory(directory: Directory, pack: RulePack) -> list[str]:
    """Problems, empty when every (tier, agency) the pack routes to resolves at every commune."""
    problems: list[str] = []
    communes = directory.units.by_kind["commune"]
    locations = [Location(province_code=int(u.province), commune_code=int(c)) for c, u in communes.items()]
    for tier, agency in sorted(routable_pairs(pack)):
        failures = 0
        for loc in locations:
            try:
                aid = directory.id_for(tier, agency, loc)
                t, unit, a = directory._parse(aid)
                chain = directory.supervisor_ids(t, unit, a)
                parent = directory.parent_id(t, unit, a)
                missing = [x for x in chain + ([parent] if parent else []) if x not in directory]
                if missing:
                    raise KeyError(f"{aid} points at unknown {missing}")
            except KeyError as exc:
                failures += 1
                if failures == 1:
                    problems.append(f"({tier}, {agency}) at commune {loc.commune_code}: {exc.args[0]}")
        if failures > 1:
            problems.append(f"({tier}, {agency}): {failures} communes in all do not resolve")
    return problems
