"""What the benchmarks share: a workspace per run, Beacon as a real process, timing and the table.

Every Beacon service under test runs as its production command (`beacon run <service>`) in its
own process, with its own temporary SQLite database and a unique topic and consumer-group prefix
on the real broker. The benchmark process is the load generator and the observer; the baselines
run in the benchmark process too. Nothing here asserts a timing: figures are reported, not judged.
"""

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BEACON_SECRET = "bench-secret-key"
WEBHOOK_SECRET = "bench-webhook-secret"


def kafka_bootstrap() -> str:
    return os.environ.get("BEACON_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


SETTINGS = ["home", "school", "care_facility", "health_facility", "service_provider", "online",
            "public", "other"]


def report_space(seed: int):
    """A seeded random source and what synthetic reports are drawn from: every commune (ward) of
    vietnam-provinces, and the default pack's categories and indicators."""
    import random

    from vietnam_provinces import Ward

    from services.escalation.rulepack import load_pack

    pack = load_pack("default")
    wards = sorted(Ward.iter_all(), key=lambda w: int(w.code))
    return (random.Random(seed), wards, sorted(pack.category_codes),
            sorted(pack.indicator_codes))


@dataclass
class Row:
    """One line of the table. `higher_is_better` decides how the ratio reads."""

    name: str
    beacon: float
    baseline: float | None
    unit: str
    goal: str = ""
    higher_is_better: bool = True

    def ratio(self) -> str:
        if self.baseline in (None, 0) or self.beacon != self.beacon:
            return "-"
        ratio = self.beacon / self.baseline
        return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.4f}x"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    if unit == "ms":
        return f"{value:,.1f} ms"
    return f"{value:,.0f} {unit}"


def table(rows: list[Row]) -> str:
    head = ("benchmark", "Beacon", "baseline", "ratio", "goal")
    cells = [head] + [(r.name, fmt(r.beacon, r.unit), fmt(r.baseline, r.unit), r.ratio(), r.goal)
                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for n, c in enumerate(cells):
        lines.append(" | ".join(
            c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(head))))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def note(message: str) -> None:
    print(f"  {message}", flush=True)


@dataclass
class Workspace:
    """A temporary directory, a unique topic prefix, and the processes started for one benchmark."""

    name: str
    dir: Path = field(init=False)
    tag: str = field(init=False)
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    def __post_init__(self):
        self.tag = f"bench{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"beacon-{self.name}-"))

    @property
    def prefix(self) -> str:
        return f"{self.tag}."

    @property
    def database_url(self) -> str:
        # BENCH_DATABASE_URL names a PostgreSQL server (`tools/postgres.sh url`): each run then
        # gets its own database there, named by its tag, dropped at the end.
        server = os.environ.get("BENCH_DATABASE_URL")
        if server:
            return f"{server.rsplit('/', 1)[0]}/{self.tag}"
        return f"sqlite+aiosqlite:///{self.dir / 'beacon.db'}"

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def settings(self, **overrides):
        from services.common.config import Settings

        values = dict(kafka_bootstrap=kafka_bootstrap(), database_url=self.database_url,
                      topic_prefix=self.prefix, consumer_group_prefix=self.tag,
                      secret_key=BEACON_SECRET, webhook_secret=WEBHOOK_SECRET)
        values.update(overrides)
        return Settings(**values)

    def env(self, settings) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
        for name, value in settings.model_dump().items():
            if value is not None:
                env[f"BEACON_{name.upper()}"] = str(value)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def spawn(self, label: str, args: list[str], env: dict[str, str] | None = None):
        log = open(self.dir / f"{label}.log", "wb")  # noqa: SIM115, ASYNC230 - the child's stdout
        proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env or dict(os.environ),
                                                    stdout=log, stderr=asyncio.subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    async def migrate(self, settings) -> None:
        from services.common.migrate import upgrade

        if os.environ.get("BENCH_DATABASE_URL"):
            await _postgres(self.database_url, f'CREATE DATABASE "{self.tag}"')
        await asyncio.to_thread(upgrade, settings.database_url)  # Alembic runs its own loop

    async def beacon(self, service: str, settings, label: str | None = None) -> str:
        """Start `beacon run <service>` (database migrated), wait for /readyz, return its URL.
        `label` names its log when one service runs as several instances."""
        import httpx

        port = free_port()
        label = label or service
        proc = await self.spawn(label, [PY, "-m", "services.cli", "run", service,
                                        "--port", str(port)], self.env(settings))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(
                        f"beacon run {service} exited ({proc.returncode}); "
                        f"see {self.dir / (label + '.log')}:\n{self.tail(label)}")
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        return base
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"beacon run {service} not ready in 60 s:\n{self.tail(label)}")
                await asyncio.sleep(0.1)

    def tail(self, label: str, lines: int = 20) -> str:
        path = self.dir / f"{label}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_lines(self, label: str, contains: str) -> int:
        path = self.dir / f"{label}.log"
        return sum(contains in line for line in path.read_text(errors="replace").splitlines())

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:  # a graceful stop would first answer requests the load generator gave up on
                    await asyncio.wait_for(proc.wait(), 3)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self.procs.clear()
        await delete_topics(self.prefix)
        if os.environ.get("BENCH_DATABASE_URL"):
            await _postgres(self.database_url, f'DROP DATABASE IF EXISTS "{self.tag}"')
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def instances() -> int:
    """BENCH_INSTANCES: how many processes run the service under test (escalation, notifier).
    More than one share the database, so they need PostgreSQL (BENCH_DATABASE_URL)."""
    n = int(os.environ.get("BENCH_INSTANCES", "1"))
    if n > 1 and not os.environ.get("BENCH_DATABASE_URL"):
        raise SystemExit("BENCH_INSTANCES > 1 needs BENCH_DATABASE_URL (a PostgreSQL server)")
    return n


async def _postgres(database_url: str, statement: str) -> None:
    """Run one statement on the server's maintenance database (CREATE/DROP DATABASE)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    conn = await asyncpg.connect(user=url.username, password=url.password, host=url.host,
                                 port=url.port, database="postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def delete_topics(prefix: str) -> None:
    """Remove this run's topics and consumer groups from the broker (best effort)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap(), request_timeout_ms=10000)
    try:
        await admin.start()
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
        groups = [g[0] for g in await admin.list_consumer_groups()
                  if g[0].startswith(prefix.rstrip("."))]
        if groups:
            try:
                await admin.delete_consumer_groups(groups)
            except Exception:  # noqa: BLE001 - a group still tearing down; harmless
                pass
    except Exception as exc:  # noqa: BLE001 - clean-up must not hide the figures
        note(f"(could not delete topics {prefix}*: {type(exc).__name__})")
    finally:
        await admin.close()


async def create_topic(name: str, partitions: int = 3) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from services.common.kafka import _leaders_elected

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap(), request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
        await _leaders_elected(admin, [name])
    finally:
        await admin.close()


def producer(**overrides):
    """A raw aiokafka producer configured as Beacon's (acks=all, idempotent)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(bootstrap_servers=kafka_bootstrap(), acks="all",
                            enable_idempotence=True, **overrides)


async def open_loop(rate: float, n: int, fire) -> float:
    """Start `fire(i, scheduled)` at a fixed rate, never waiting for earlier ones (open loop, so a
    slow server cannot slow the arrivals down: no coordinated omission). Returns the elapsed time
    once all have finished. `scheduled` is the perf_counter time the request was due."""
    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, due)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


async def closed_loop(concurrency: int, items, fire, max_s: float | None = None) -> float:
    """`concurrency` workers each send one item, wait for it, send the next, until the items run
    out or `max_s` seconds have passed (then no new item is started). Returns elapsed s."""
    queue = iter(items)
    stop_at = time.perf_counter() + max_s if max_s else float("inf")

    async def worker():
        for item in queue:
            await fire(item)
            if time.perf_counter() > stop_at:
                return

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


class Observer:
    """Watches a topic from its current end (no consumer group: it commits nothing) and notes the
    perf_counter time at which each record of one CloudEvents type arrives, by record key."""

    def __init__(self, topic: str, ce_type: str, accept=None):
        self.topic, self.ce_type = topic, ce_type.encode()
        self.accept = accept  # optional test of the record's value (bytes)
        self.seen: dict[bytes, list[float]] = {}
        self.count = 0
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        self._consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap(),
                                          enable_auto_commit=False, fetch_max_wait_ms=20)
        await self._consumer.start()
        parts = await self._consumer._client._wait_on_metadata(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=50)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    if dict(r.headers).get("ce_type") == self.ce_type and (
                            self.accept is None or self.accept(r.value)):
                        self.seen.setdefault(r.key, []).append(now)
                        self.count += 1

    async def wait_for(self, keys, timeout: float) -> bool:
        """True once every key has been seen (False after `timeout` seconds)."""
        deadline = time.perf_counter() + timeout
        pending = set(keys)
        while pending:
            pending = {k for k in pending if k not in self.seen}
            if not pending:
                break
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def percentile_rows(label: str, beacon: list[float], baseline: list[float],
                    goal_p99: str = "") -> list[Row]:
    """The p50 and p99 rows of a latency (ms); `label` has `{q}` where the percentile goes."""
    return [Row(label.format(q=q), pct(beacon, q), pct(baseline, q), "ms",
                goal_p99 if q == 99 else "", False) for q in (50, 99)]
