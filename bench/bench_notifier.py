"""Notifier: webhook deliveries per second to a loopback receiver, beside raw httpx posting.

Run alone: .venv/bin/python -m bench.bench_notifier

Beacon: `beacon run notifier` in its own process (its temporary SQLite database, its delivery
worker and outbox relay). The receiver is bench/receiver.py in a third process: it answers 200
and appends every request, with its arrival time, to webhook.jsonl, as tools/inbox.py does, but
served by uvicorn, so that it is not the limit (tools/inbox.py takes about 150 posts/s). This
process writes AlertRequested events (what escalation publishes) to the alerts topic with a raw
producer; each alert has one webhook contact on the receiver and its own recipient, so storm
protection (per-recipient rate limits) does not hold any back. An alert counts as delivered
when the receiver has the signed POST; times come from the receiver's log.
- latency: alerts written on a fixed schedule (open loop) at RATE/s; latency = scheduled write
  -> arrival at the receiver. RATE is below what the notifier sustains here.
- throughput: then a backlog of N alerts written at once; deliveries/s = alerts delivered /
  (first write -> last delivery), waiting at most CAP_S seconds. An alert is delivered when the
  receiver has it and its `delivered` receipt is on the deliveries topic: the notifier has
  recorded it. (Counting arrivals alone rewarded sending ahead of recording.)
Baseline, same run, same receiver: raw httpx posting with one reused AsyncClient, the body and
headers of a delivery Beacon made in this run, with as many posts in flight as the notifier's
CONCURRENCY (for N posts or 10 s); and the same open loop at RATE/s. A second throughput
baseline posts the same way with raw aiohttp, the client the notifier's webhook channel uses.
"""

import asyncio
import json
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import httpx

from bench.common import (
    PY, Observer, Row, Workspace, closed_loop, free_port, instances, note, open_loop,
    percentile_rows, producer,
)

N_BACKLOG = 2000
RATE = 10.0  # below the notifier's capacity on this machine, so latency is not queueing
SECONDS_AT_RATE = 6
WARMUP = 20
CAP_S = 20  # stop waiting for a backlog after this long: the figure is what was delivered by then


def make_alerts(n: int, hook_base: str, phase: str,
                seed: int = 17) -> list[tuple[str, bytes, bytes]]:
    """(alert_id, key, value) triples: AlertRequested envelopes, one recipient each."""
    from schemas.events import AlertRequested, Envelope
    from services.escalation.rulepack import load_pack

    pack = load_pack("default")
    rnd = random.Random(seed)
    categories = sorted(pack.category_codes)
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        case_id = f"C-BENCH{uuid.uuid4().hex[:12].upper()}"
        authority = f"commune:{i}:{phase}"
        alert = AlertRequested(
            alert_id=f"{case_id}:{authority}:alert", case_id=case_id, authority_id=authority,
            tier="commune", agency=rnd.choice(["child_protection", "police"]), role="act",
            kind="alert", category=rnd.choice(categories), severity=rnd.choice(["P1", "P2", "P3"]),
            publicity="PA0", ack_due=now + timedelta(hours=4),
            contacts=[{"channel": "webhook", "address": f"{hook_base}/hooks/{phase}/{i}"}],
            rulepack_version=pack.version,
        )
        out.append((alert.alert_id, case_id.encode(),
                    Envelope.wrap(alert, "beacon/escalation").model_dump_json().encode()))
    return out


HEADERS = [("ce_type", b"beacon.alert.requested"), ("content-type", b"application/json")]


class Receiver:
    """Reads the receiver's webhook.jsonl as it grows: Idempotency-Key -> arrival (Unix time)."""

    def __init__(self, path):
        self.path, self.offset, self.arrived = path, 0, {}
        self.first_request: dict | None = None

    def poll(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            row = json.loads(line)
            headers = {k.lower(): v for k, v in row["headers"].items()}
            key = headers.get("idempotency-key")
            self.first_request = self.first_request or row
            if key is not None and key not in self.arrived:
                self.arrived[key] = datetime.fromisoformat(row["received_at"]).timestamp()
        return len(self.arrived)

    async def wait_for(self, keys, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        keys = list(keys)
        while True:
            self.poll()
            if all(k in self.arrived for k in keys):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)


async def run(quick: bool = False) -> list[Row]:
    from schemas.events import Topics
    from services.notifier.handlers import CONCURRENCY

    n_backlog = 400 if quick else N_BACKLOG
    n_rate = int(RATE * (3 if quick else SECONDS_AT_RATE))
    ws = Workspace("notifier")
    prod = producer(linger_ms=5)
    receipts = None
    try:
        port = free_port()
        await ws.spawn("receiver", [PY, "-m", "bench.receiver", "--dir", str(ws.dir / "inbox"),
                                    "--http-port", str(port)])
        hook = f"http://127.0.0.1:{port}"
        receiver = Receiver(ws.dir / "inbox" / "webhook.jsonl")
        settings = ws.settings(demo_webhook_base=hook, sms_gateway_url=hook + "/sms")
        await ws.migrate(settings)
        for i in range(instances()):
            await ws.beacon("notifier", settings, label=f"notifier-{i}" if i else None)
        alerts = ws.topic(Topics.ALERTS)
        # Receipts are keyed by case id, and each alert here has a case of its own.
        receipts = Observer(ws.topic(Topics.DELIVERIES), "beacon.delivery.outcome",
                            accept=lambda value: b'"status":"delivered"' in value)
        await receipts.start()
        note(f"notifier: beacon run notifier x{instances()}, receiver bench/receiver.py at "
             f"{hook}, topics {ws.prefix}*, database {settings.database_url}")
        await prod.start()

        warm = make_alerts(WARMUP, hook, "warm")
        await asyncio.gather(*[await prod.send(alerts, v, key=k, headers=HEADERS)
                               for _, k, v in warm])
        if not await receiver.wait_for([a for a, _, _ in warm], 60):
            raise RuntimeError(f"notifier: warm-up not delivered in 60 s:\n{ws.tail('notifier')}")

        # Latency at a fixed rate.
        at_rate = make_alerts(n_rate, hook, "rate")
        sched: dict[str, float] = {}
        offset = time.time() - time.perf_counter()  # the receiver logs wall-clock time

        async def fire(i: int, due: float) -> None:
            alert_id, k, v = at_rate[i]
            sched[alert_id] = due + offset
            await prod.send_and_wait(alerts, v, key=k, headers=HEADERS)

        await open_loop(RATE, n_rate, fire)
        await receiver.wait_for(sched, CAP_S)
        lat = [(receiver.arrived[a] - t) * 1000 for a, t in sched.items() if a in receiver.arrived]

        # Throughput: a backlog written at once.
        backlog = make_alerts(n_backlog, hook, "backlog")
        start = time.time()
        futures = [await prod.send(alerts, v, key=k, headers=HEADERS) for _, k, v in backlog]
        await asyncio.gather(*futures)
        complete = await receiver.wait_for([a for a, _, _ in backlog], CAP_S)
        await receipts.wait_for([k for _, k, _ in backlog], CAP_S if complete else 0)
        clock = time.time() - time.perf_counter()  # receipts are timed by perf_counter
        got = [max(receiver.arrived[a], receipts.seen[k][0] + clock) for a, k, _ in backlog
               if a in receiver.arrived and k in receipts.seen]
        tp = len(got) / (max(got) - start) if got else 0.0
        arrived = [receiver.arrived[a] for a, _, _ in backlog if a in receiver.arrived]
        requests = receiver.path.read_bytes().count(b"\n")
        note(f"notifier: {len(lat)}/{n_rate} delivered at {RATE:.0f}/s; {len(got)}/{n_backlog} of "
             f"the backlog delivered and recorded"
             f"{'' if complete else f' (stopped waiting after {CAP_S} s)'}; "
             f"receiver requests: {requests}; arrivals alone: "
             f"{len(arrived) / (max(arrived) - start) if arrived else 0:,.0f}/s")

        # Baseline: raw httpx, one reused client, the same body and headers as a real delivery.
        sample = receiver.first_request
        body = json.dumps(sample["body"], ensure_ascii=False, separators=(",", ":")).encode()
        keep = {"content-type", "x-beacon-timestamp", "x-beacon-signature", "user-agent"}
        headers = {k: v for k, v in sample["headers"].items() if k.lower() in keep}
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(timeout=10, limits=limits, headers=headers) as client:

            async def post(key: str, path: str) -> None:
                answer = await client.post(f"{hook}/hooks/{path}", content=body,
                                           headers={"Idempotency-Key": key})
                answer.raise_for_status()

            async def backlog_rate(post, name: str) -> float:
                """CONCURRENCY posts in flight (the notifier's limit), the backlog or 10 s."""
                keys: list[str] = []

                async def one(i: int) -> None:
                    keys.append(f"{name}-{i}")
                    await post(keys[-1], f"{name}/{i}")

                t0 = time.time()
                await closed_loop(CONCURRENCY, range(n_backlog), one, 10)
                await receiver.wait_for(keys, 10)
                return len(keys) / (max(receiver.arrived[k] for k in keys) - t0)

            base_tp = await backlog_rate(post, "raw-backlog")

            base_sched: dict[str, float] = {}

            async def fire_base(i: int, due: float) -> None:
                key = f"raw-rate-{i}"
                base_sched[key] = due + offset
                await post(key, f"raw-rate/{i}")

            await open_loop(RATE, n_rate, fire_base)
            await receiver.wait_for(base_sched, 10)
            base_lat = [(receiver.arrived[k] - t) * 1000 for k, t in base_sched.items()
                        if k in receiver.arrived]

        # Second baseline: raw aiohttp, the HTTP client the notifier's webhook channel uses.
        async with aiohttp.ClientSession(headers=headers) as session:

            async def post_aiohttp(key: str, path: str) -> None:
                async with session.post(f"{hook}/hooks/{path}", data=body,
                                        headers={"Idempotency-Key": key}) as answer:
                    answer.raise_for_status()

            aiohttp_tp = await backlog_rate(post_aiohttp, "aiohttp-backlog")
    finally:
        if receipts is not None:
            await receipts.stop()
        await prod.stop()
        await ws.close()

    return [
        Row("notifier: webhook deliveries/s (backlog)", tp, base_tp, "/s", ">= 1,000/s"),
        Row("notifier: same, baseline = raw aiohttp (the notifier's client)", tp, aiohttp_tp, "/s"),
        *percentile_rows(f"notifier: p{{q}} alert event -> delivery at {RATE:.0f}/s",
                         lat, base_lat),
    ]


if __name__ == "__main__":
    from bench.common import table

    print(table(asyncio.run(run())))
