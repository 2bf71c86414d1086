"""Escalation service: cases decided per second from Kafka, beside a raw aiokafka consumer.

Run alone: .venv/bin/python -m bench.bench_escalation

Beacon: `beacon run escalation` in its own process (its temporary SQLite database, its outbox
relay). This process writes ReportReceived events (what intake publishes: varied communes,
categories, settings, indicators, one new case each) to the inputs topic with a raw producer,
and watches the cases topic for the CaseDecided events that the service's outbox relay
publishes. A case counts as decided when its CaseDecided is on Kafka, so every figure includes
the decision transaction (inbox row, case, targets, timers, outbox rows), the offset commit and
the relay.
- latency: events written on a fixed schedule (open loop) at RATE/s; latency = scheduled write
  -> CaseDecided seen. RATE is set below what the service sustains here, so this is the latency
  of an unloaded service, not of a queue.
- throughput: then a backlog of N events written at once; decided/s = cases decided / (first
  write -> last CaseDecided seen), waiting at most CAP_S seconds.
Baselines, same run, same broker, same events:
- raw consume: a new consumer group reading the inputs topic from the start with getmany() and
  one commit per batch;
- raw consume, commit per message: getone() and commit() after each message, which is what
  FastStream's NACK_ON_ERROR ack policy does for Beacon's consumers;
- latency: a raw consumer (no group) on a topic written at the same RATE: write -> received.
"""

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.common import (
    SETTINGS, Observer, Row, Workspace, create_topic, instances, kafka_bootstrap, note,
    open_loop, percentile_rows, producer, report_space,
)

N_BACKLOG = 1000
RATE = 10.0  # below the service's capacity on this machine, so latency is not queueing
SECONDS_AT_RATE = 6
CAP_S = 20  # stop waiting for a backlog after this long: the figure is what was decided by then
WARMUP = 50


def make_events(n: int, seed: int = 13) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs: ReportReceived envelopes, each about a new case."""
    from schemas.events import Envelope, ReportReceived

    rnd, wards, categories, indicators = report_space(seed)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        w = rnd.choice(wards)
        case_id = f"C-BENCH{uuid.uuid4().hex[:12].upper()}"
        event = ReportReceived(
            case_id=case_id, report_id=f"R-BENCH{i:07d}", new_case=True,
            received_at=now - timedelta(minutes=rnd.randrange(1, 600)),
            channel="phone", category=rnd.choice(categories),
            location={"province_code": int(w.province_code), "commune_code": int(w.code)},
            setting=rnd.choice(SETTINGS),
            child_ages=[rnd.randrange(18) for _ in range(rnd.randint(1, 2))],
            indicators=rnd.sample(indicators, rnd.choice([0, 0, 1, 1, 2])),
            publicity=rnd.choice(["PA0", "PA0", "PA0", "PA1"]),
        )
        envelope = Envelope.wrap(event, "beacon/intake")
        out.append((case_id.encode(), envelope.model_dump_json().encode()))
    return out


HEADERS = [("ce_type", b"beacon.report.received"), ("content-type", b"application/json")]


async def run(quick: bool = False) -> list[Row]:
    from aiokafka import AIOKafkaConsumer

    from schemas.events import Topics

    n_backlog = 400 if quick else N_BACKLOG
    n_rate = int(RATE * (3 if quick else SECONDS_AT_RATE))
    events = make_events(WARMUP + n_backlog + n_rate)
    warm, backlog, at_rate = (events[:WARMUP], events[WARMUP:WARMUP + n_backlog],
                              events[WARMUP + n_backlog:])
    ws = Workspace("escalation")
    observer = None
    prod = producer(linger_ms=5)
    try:
        settings = ws.settings()
        await ws.migrate(settings)
        for i in range(instances()):
            await ws.beacon("escalation", settings, label=f"escalation-{i}" if i else None)
        inputs = ws.topic(Topics.INPUTS)
        note(f"escalation: beacon run escalation x{instances()}, topics {ws.prefix}*, "
             f"database {settings.database_url}")
        observer = Observer(ws.topic(Topics.CASES), "beacon.case.decided")
        await observer.start()
        await prod.start()

        await asyncio.gather(*[await prod.send(inputs, v, key=k, headers=HEADERS) for k, v in warm])
        if not await observer.wait_for([k for k, _ in warm], 60):
            raise RuntimeError(f"escalation: warm-up not decided in 60 s:\n{ws.tail('escalation')}")

        async def latency_at_rate(topic: str, obs: Observer, wait_s: float) -> list[float]:
            """Write `at_rate` to `topic` on a fixed schedule; ms from each due time to `obs`."""
            sched: dict[bytes, float] = {}

            async def fire(i: int, due: float) -> None:
                k, v = at_rate[i]
                sched[k] = due
                await prod.send_and_wait(topic, v, key=k, headers=HEADERS)

            await open_loop(RATE, n_rate, fire)
            await obs.wait_for(sched, wait_s)
            return [(obs.seen[k][0] - t) * 1000 for k, t in sched.items() if k in obs.seen]

        lat = await latency_at_rate(inputs, observer, 60)
        # Throughput: a backlog written at once.
        start = time.perf_counter()
        futures = [await prod.send(inputs, v, key=k, headers=HEADERS) for k, v in backlog]
        await asyncio.gather(*futures)
        written = time.perf_counter() - start
        complete = await observer.wait_for([k for k, _ in backlog], CAP_S)
        last = max((observer.seen[k][0] for k, _ in backlog if k in observer.seen), default=start)
        decided = sum(k in observer.seen for k, _ in backlog)
        tp = decided / (last - start)

        repeats = sum(len(v) > 1 for v in observer.seen.values())
        note(f"escalation: backlog of {n_backlog} written in {written:.2f} s; "
             f"{decided}/{n_backlog} decided"
             f"{'' if complete else f' (stopped waiting after {CAP_S} s)'}; "
             f"{len(lat)}/{n_rate} decided at {RATE:.0f}/s; "
             f"cases decided more than once: {repeats}")

        # Baselines: raw consumers over the same inputs topic.
        total = WARMUP + n_backlog + n_rate

        async def raw_consume(per_message: bool) -> float:
            consumer = AIOKafkaConsumer(
                inputs, bootstrap_servers=kafka_bootstrap(), group_id=f"{ws.tag}-raw-{per_message}",
                auto_offset_reset="earliest", enable_auto_commit=False)
            await consumer.start()
            try:
                seen = 0
                t0 = time.perf_counter()
                while seen < total and time.perf_counter() - t0 < (8 if per_message else 30):
                    if per_message:
                        await consumer.getone()
                        await consumer.commit()
                        seen += 1
                    else:
                        batch = await consumer.getmany(timeout_ms=200)
                        seen += sum(len(r) for r in batch.values())
                        if batch:
                            await consumer.commit()
                # The group's join is part of both: Beacon's consumer had joined before it began.
                return seen / (time.perf_counter() - t0)
            finally:
                await consumer.stop()

        raw_batch = await raw_consume(per_message=False)
        raw_each = await raw_consume(per_message=True)

        base_topic = ws.topic("bench.baseline")
        await create_topic(base_topic)
        base_obs = Observer(base_topic, "beacon.report.received")
        await base_obs.start()
        base_lat = await latency_at_rate(base_topic, base_obs, 30)
        await base_obs.stop()
    finally:
        if observer is not None:
            await observer.stop()
        await prod.stop()
        await ws.close()

    return [
        Row("escalation: cases decided/s from Kafka (backlog)", tp, raw_batch, "/s", ">= 1,000/s"),
        Row("escalation: same, baseline = raw consume with commit per message", tp, raw_each, "/s"),
        *percentile_rows(f"escalation: p{{q}} input -> decision on Kafka at {RATE:.0f}/s",
                         lat, base_lat),
    ]


if __name__ == "__main__":
    from bench.common import table

    print(table(asyncio.run(run())))
