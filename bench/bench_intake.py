"""Intake: POST /api/v1/reports against the real broker, beside a raw aiokafka producer.

Run alone: .venv/bin/python -m bench.bench_intake

Beacon: `beacon run intake` in its own process (uvicorn, its temporary SQLite database, its
read-model consumer on the inputs topic) on the broker at BEACON_KAFKA_BOOTSTRAP. The load
generator is this process: one aiohttp.ClientSession over keep-alive connections, an operator's
bearer token and an Idempotency-Key on every report, as an operators' client would send. Reports vary
(commune, category, setting, children, indicators), so most open a new case and a few join one.
- HTTP ceiling: GET /healthz in the same closed loop, on the idle server (context only).
- throughput: a closed loop of CONCURRENCY clients, each posting its next report when the last
  is answered, for N_THROUGHPUT reports or MAX_S seconds; accepted = 202.
- latency: an open loop at RATE reports/s for SECONDS_AT_RATE s (arrivals on a fixed schedule,
  whatever the answers do); latency runs from the scheduled send to the answer. A request not
  answered within TIMEOUT_S counts as TIMEOUT_S (so a p99 at that figure means "at least").
Baseline, same run, same broker: a raw AIOKafkaProducer (acks=all, idempotent) sending a
ReportReceived envelope of the same size with send_and_wait, in the same closed and open loops.
"""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp

from bench.common import (
    SETTINGS, Row, Workspace, closed_loop, note, open_loop, pct, percentile_rows, producer,
    report_space,
)

CONCURRENCY = 32
N_THROUGHPUT = 1000
MAX_S = 15
RATE = 200.0
SECONDS_AT_RATE = 5
TIMEOUT_S = 10.0
WARMUP = 100


def make_reports(n: int, seed: int = 11) -> list[dict]:
    rnd, wards, categories, indicators = report_space(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        w = rnd.choice(wards)
        out.append({
            "received_at": (now - timedelta(minutes=rnd.randrange(1, 600))).isoformat(),
            "channel": rnd.choice(["phone", "phone", "web", "walk_in"]),
            "category": rnd.choice(categories),
            "subcategory": None,
            "location": {"province_code": int(w.province_code), "commune_code": int(w.code)},
            "other_locations": [],
            "setting": rnd.choice(SETTINGS),
            "children": [{"age": rnd.randrange(18), "sex": rnd.choice(["female", "male"]),
                          "name": f"Bench Child {i}-{k}"} for k in range(rnd.randint(1, 2))],
            "indicators": rnd.sample(indicators, rnd.choice([0, 0, 1, 1, 2])),
            "publicity": rnd.choice(["PA0", "PA0", "PA0", "PA1"]),
            "narrative": "A neighbour heard shouting and a child crying late at night. " * 3,
            "reporter": {"name": f"Bench Reporter {i}", "phone": f"09{i:08d}",
                         "relationship": "neighbour", "consent_to_contact": True},
        })
    return out


async def _operator_token(settings) -> str:
    from services.common import auth
    from services.common.db import Database

    db = Database(settings.database_url)
    try:
        async with db.writes() as session, session.begin():
            await auth.create_user(session, "bench-operator", "Bench operator", "operator",
                                   "national", [])
            await session.flush()
            return await auth.issue_token(session, "bench-operator", "bench")
    finally:
        await db.dispose()


async def _check_channels(reports: list[dict]) -> list[dict]:
    from schemas.reports import Report

    channel = Report.model_fields["channel"].annotation
    allowed = set(getattr(channel, "__args__", ()))
    if allowed:
        for r in reports:
            if r["channel"] not in allowed:
                r["channel"] = sorted(allowed)[0]
    return reports


async def run(quick: bool = False) -> list[Row]:
    from schemas.events import Envelope, ReportReceived, Topics

    n_tp = 400 if quick else N_THROUGHPUT
    n_rate = int(RATE * (2 if quick else SECONDS_AT_RATE))
    max_s = 5 if quick else MAX_S
    ws = Workspace("intake")
    try:
        settings = ws.settings()
        await ws.migrate(settings)
        token = await _operator_token(settings)
        reports = await _check_channels(make_reports(WARMUP + n_rate + n_tp))
        base = await ws.beacon("intake", settings)
        note(f"intake: beacon run intake at {base}, topics {ws.prefix}*, database {ws.dir}")

        statuses: dict = {}
        # aiohttp, not httpx: at 32 requests in flight httpx's pool is the limit here (about 235
        # requests/s to a bare uvicorn app, against 4,000 for aiohttp). Idle connections are
        # dropped before uvicorn's 5 s keep-alive timeout closes them under a request.
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=4)
        async with aiohttp.ClientSession(
                base, connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                headers={"Authorization": f"Bearer {token}"}) as client:

            async def post(body: dict) -> float:
                t = time.perf_counter()
                try:
                    async with client.post("/api/v1/reports", json=body,
                                           headers={"Idempotency-Key": uuid.uuid4().hex}) as answer:
                        text = await answer.text()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                    return t
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
                if answer.status != 202 and statuses[answer.status] <= 3:
                    note(f"intake: HTTP {answer.status}: {text[:200]}")
                return t

            await closed_loop(8, reports[:WARMUP], post)  # connections, caches, consumer group
            statuses.clear()

            # A cheap request on the same server and client, idle: the HTTP stack's own ceiling.
            async def health(_):
                async with client.get("/healthz") as answer:
                    await answer.read()

            health_n = 500
            health_elapsed = await closed_loop(CONCURRENCY, range(health_n), health)

            # Closed loop: throughput.
            lat_tp: list[float] = []

            async def timed(body: dict) -> None:
                t = await post(body)
                lat_tp.append((time.perf_counter() - t) * 1000)

            elapsed = await closed_loop(CONCURRENCY, reports[WARMUP + n_rate:], timed, max_s)
            ok_tp = statuses.get(202, 0)
            sent_tp = sum(statuses.values())
            errors = {k: v for k, v in statuses.items() if k != 202}
            statuses.clear()

            # Open loop at RATE/s, last: an overloaded server is left with a queue.
            at_rate = reports[WARMUP:WARMUP + n_rate]
            lat_rate: list[float] = []

            async def fire(i: int, due: float) -> None:
                try:  # bound the whole request, queueing for a connection included
                    await asyncio.wait_for(post(at_rate[i]), TIMEOUT_S)
                except TimeoutError:
                    statuses["timeout"] = statuses.get("timeout", 0) + 1
                lat_rate.append(min((time.perf_counter() - due) * 1000, TIMEOUT_S * 1000))

            rate_elapsed = await open_loop(RATE, n_rate, fire)
            ok_rate = statuses.get(202, 0)
            errors_rate = {k: v for k, v in statuses.items() if k != 202}

        on_kafka = await _count(ws.topic(Topics.INPUTS))
        note(f"intake: closed loop: {ok_tp}/{sent_tp} accepted in {elapsed:.1f} s "
             f"({errors or 'no errors'}); open loop: {ok_rate}/{n_rate} accepted at {RATE:.0f}/s "
             f"({errors_rate or 'no errors'}; the last answered {rate_elapsed:.1f} s after the "
             f"first was sent); {on_kafka} events on the inputs topic for "
             f"{WARMUP + ok_rate + ok_tp} accepted reports (counted when the load ended: requests "
             f"the client gave up on may still be published)")

        # Baseline: a raw producer, same broker, an envelope of the same shape and size.
        sample = ReportReceived(
            case_id="C-000000000BENCH000", report_id="R-000000000BENCH000", new_case=True,
            received_at=datetime.now(UTC), channel="phone", category="PHYS_VIOLENCE",
            location={"province_code": 1, "commune_code": 4}, setting="home", child_ages=[5],
            indicators=["ongoing"], publicity="PA0")
        payload = Envelope.wrap(sample, "beacon/intake").model_dump_json().encode()
        topic = ws.topic("bench.baseline")
        from bench.common import create_topic

        await create_topic(topic)
        prod = producer()
        await prod.start()
        try:
            async def send(i: int) -> None:
                await prod.send_and_wait(topic, payload, key=f"C-{i}".encode(),
                                         headers=[("ce_type", b"beacon.report.received")])

            await asyncio.gather(*(send(i) for i in range(WARMUP)))
            base_rate: list[float] = []

            async def fire_base(i: int, due: float) -> None:
                await send(i)
                base_rate.append((time.perf_counter() - due) * 1000)

            await open_loop(RATE, n_rate, fire_base)
            base_tp: list[float] = []

            async def timed_base(i: int) -> None:
                t = time.perf_counter()
                await send(i)
                base_tp.append((time.perf_counter() - t) * 1000)

            base_elapsed = await closed_loop(CONCURRENCY, range(n_tp), timed_base, max_s)
        finally:
            await prod.stop()
    finally:
        await ws.close()

    return [
        Row(f"intake: accepted reports/s ({CONCURRENCY} concurrent)", ok_tp / elapsed,
            len(base_tp) / base_elapsed, "/s", ">= 1,000/s"),
        Row(f"intake: p50 latency, closed loop ({CONCURRENCY} concurrent)", pct(lat_tp, 50),
            pct(base_tp, 50), "ms", "", False),
        *percentile_rows(
            f"intake: p{{q}} latency at {RATE:.0f}/s (open loop; {TIMEOUT_S:.0f} s = timed out)",
            lat_rate, base_rate, "< 100 ms"),
        Row("intake: GET /healthz/s, same server+client (HTTP ceiling)",
            health_n / health_elapsed, None, "/s"),
    ]


async def _count(topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from bench.common import kafka_bootstrap

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap())
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        return sum(ends[tp] - starts[tp] for tp in tps)
    finally:
        await consumer.stop()


if __name__ == "__main__":
    from bench.common import table

    print(table(asyncio.run(run())))
