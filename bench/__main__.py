"""Every benchmark, one table: `python -m bench` (the Makefile's `make bench` starts Kafka first).

    .venv/bin/python -m bench [--quick] [--only intake,escalation,notifier,engine]

Each service is measured as `beacon run <service>` in its own process on the real broker at
BEACON_KAFKA_BOOTSTRAP (default 127.0.0.1:9092), beside a baseline measured in the same run.
Figures are printed, never asserted. How each one is measured: the docstring of its module.
"""

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime

from bench.common import ROOT, Row, kafka_bootstrap, loadavg, table

BENCHES = ("engine", "intake", "escalation", "notifier")


def engine_rows(seconds: float = 1.0) -> list[Row]:
    """The pure engine (bench/bench_engine.py), briefly: decisions/s beside CaseFacts validation."""
    from datetime import timedelta

    from bench.bench_engine import make_cases, rate
    from schemas.decisions import CaseFacts
    from services.escalation.directory import build_directory
    from services.escalation.engine import decide
    from services.escalation.rulepack import load_pack

    pack = load_pack("default")
    directory = build_directory(pack)
    raw = make_cases(pack, 1000)
    facts = [CaseFacts.model_validate(c) for c in raw]
    at = {f.case_id: f.first_received_at + timedelta(minutes=1) for f in facts}
    for f in facts:
        decide(f, pack, directory, at[f.case_id])
    base, _ = rate(CaseFacts.model_validate, raw, seconds)
    best, _ = rate(lambda f: decide(f, pack, directory, at[f.case_id]), facts, seconds)
    return [Row("engine: decisions/s, one core (baseline: CaseFacts validation/s)", best, base,
                "/s", ">= 20,000/s")]


async def kafka_answers() -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap(), request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        await admin.list_topics()
        return True
    except Exception:  # noqa: BLE001
        return False
    finally:
        await admin.close()


def commit() -> str:
    if named := os.environ.get("BENCH_COMMIT"):  # a run from an exported tree (git archive)
        return named
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True).stdout.strip()
        return head + (" (+ uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "unknown"


async def main(only: list[str], quick: bool) -> int:
    from bench import bench_escalation, bench_intake, bench_notifier

    print(f"Beacon benchmarks, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"Kafka at {kafka_bootstrap()}; {loadavg()}", flush=True)
    if not await kafka_answers():
        print(f"no Kafka broker answers at {kafka_bootstrap()}: start one with `make kafka`",
              file=sys.stderr)
        return 2
    rows: list[Row] = []
    failed = []
    runs = {"intake": bench_intake.run, "escalation": bench_escalation.run,
            "notifier": bench_notifier.run}
    for name in only:
        started = time.perf_counter()
        print(f"{name} ...", flush=True)
        try:
            if name == "engine":
                rows += await asyncio.to_thread(engine_rows, 0.5 if quick else 1.0)
            else:
                rows += await runs[name](quick=quick)
        except Exception:  # noqa: BLE001 - report it and go on with the others
            failed.append(name)
            traceback.print_exc()
        print(f"  {name}: {time.perf_counter() - started:.0f} s; {loadavg()}", flush=True)
    print()
    print(table(rows))
    print("\nRatio = Beacon / baseline (for latencies, how many times slower). Goals: issues 3-5.")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations (a smoke run)")
    parser.add_argument("--only", default=",".join(BENCHES),
                        help=f"comma-separated subset of {','.join(BENCHES)}")
    args = parser.parse_args()
    only = [b.strip() for b in args.only.split(",") if b.strip()]
    if unknown := [b for b in only if b not in BENCHES]:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    return asyncio.run(main(only, args.quick))


if __name__ == "__main__":
    sys.exit(cli())
