"""How many decisions per second the pure engine makes with the default pack, on one core.

Run: .venv/bin/python bench/bench_engine.py [--cases 2000] [--seconds 2]
Prints figures beside baselines measured in the same run (no assertions). Each figure is the best
and the median of several passes over the same cases (the best is the least disturbed by other
work on the machine):
- facts:   building CaseFacts with pydantic validation (what a consumer pays per event anyway);
- no-op:   calling a decide() that returns a prepared Decision (the loop's own cost);
- decide:  the real thing, over a mix of categories, indicators, settings and locations;
- decide+json: plus Decision.model_dump(mode="json"), as the service would serialise it.
Goal (issue 4): at least 20,000 decisions per second.
"""

import argparse
import random
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from vietnam_provinces import Ward

from schemas.decisions import CaseFacts, Decision
from services.escalation.directory import build_directory
from services.escalation.engine import decide
from services.escalation.rulepack import load_pack

SETTINGS = ["home", "school", "care_facility", "health_facility", "service_provider", "online",
            "public", "other"]


def make_cases(pack, n: int, seed: int = 7) -> list[dict]:
    rnd = random.Random(seed)
    wards = sorted(Ward.iter_all(), key=lambda w: int(w.code))
    indicators = sorted(pack.indicator_codes)
    start = datetime(2026, 1, 5, 8, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
    cases = []
    for i in range(n):
        w = rnd.choice(wards)
        first = start + timedelta(minutes=rnd.randrange(365 * 24 * 60))
        other = []
        if rnd.random() < 0.05:
            o = rnd.choice(wards)
            other = [{"province_code": int(o.province_code), "commune_code": int(o.code)}]
        cases.append({
            "case_id": f"C-BENCH{i:06d}",
            "category": rnd.choice(sorted(pack.category_codes)),
            "location": {"province_code": int(w.province_code), "commune_code": int(w.code)},
            "other_locations": other,
            "setting": rnd.choice(SETTINGS),
            "child_ages": [rnd.randrange(18) for _ in range(rnd.randint(1, 3))],
            "indicators": rnd.sample(indicators, rnd.choice([0, 0, 1, 1, 2, 3])),
            "publicity": rnd.choice(["PA0", "PA0", "PA0", "PA1", "PA2"]),
            "linked_reports": [first + timedelta(hours=h) for h in range(rnd.choice([1, 1, 1, 3, 10]))],
            "first_received_at": first,
        })
    return cases


def rate(fn, items, seconds: float) -> tuple[float, float]:
    """(best, median) items per second over passes through `items` for about `seconds`."""
    rates: list[float] = []
    spent = 0.0
    while spent < seconds or len(rates) < 3:
        started = time.perf_counter()
        for item in items:
            fn(item)
        elapsed = time.perf_counter() - started
        rates.append(len(items) / elapsed)
        spent += elapsed
    rates.sort()
    return rates[-1], rates[len(rates) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each figure")
    args = parser.parse_args()

    pack = load_pack("default")
    t = time.perf_counter()
    directory = build_directory(pack)
    build_ms = (time.perf_counter() - t) * 1000
    raw = make_cases(pack, args.cases)
    facts = [CaseFacts.model_validate(c) for c in raw]
    at = {f.case_id: f.first_received_at + timedelta(minutes=1) for f in facts}
    prepared = decide(facts[0], pack, directory, at[facts[0].case_id])
    for f in facts:  # warm the directory's caches, as a running service would have them
        decide(f, pack, directory, at[f.case_id])

    def noop(f: CaseFacts) -> Decision:
        return prepared

    results = {
        "facts (CaseFacts validation)": rate(CaseFacts.model_validate, raw, args.seconds),
        "no-op decide": rate(noop, facts, args.seconds),
        "decide": rate(lambda f: decide(f, pack, directory, at[f.case_id]), facts, args.seconds),
        "decide + model_dump(json)": rate(
            lambda f: decide(f, pack, directory, at[f.case_id]).model_dump(mode="json"),
            facts, args.seconds),
    }
    targets = sum(len(decide(f, pack, directory, at[f.case_id]).targets) for f in facts) / len(facts)
    print(f"rule pack {pack.version}; {len(facts)} varied cases, {targets:.1f} targets on average; "
          f"directory built in {build_ms:.0f} ms")
    # The ratio to the CaseFacts baseline moves less than raw rates on a shared machine.
    unit = results["facts (CaseFacts validation)"][0]
    print(f"{'':32s} {'best':>12s}    {'median':>12s}    {'µs (best)':>9s}  x baseline")
    for name, (best, median) in results.items():
        print(f"{name:32s} {best:12,.0f}/s  {median:12,.0f}/s   {1e6 / best:7.1f}  {unit / best:8.1f}")
    best, median = results["decide"]
    print(f"goal 20,000 decisions/s on one core: best {best:,.0f}/s, median {median:,.0f}/s")


if __name__ == "__main__":
    main()
