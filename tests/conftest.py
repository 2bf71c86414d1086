"""Shared fixtures: a real Kafka broker, a migrated database, loopback receivers, a running stack."""

import asyncio
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.brokers import LocalBroker, docker_answers

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def kafka_bootstrap():
    if bootstrap := os.environ.get("BEACON_KAFKA_BOOTSTRAP"):
        yield bootstrap
        return
    if docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalBroker()
    try:
        broker.start()
    except Exception as exc:
        message = f"no Kafka broker could be started: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield broker.bootstrap
    # Each test has its own topics: delete them, or the broker's start slows run after run.
    # Bounded: a broker gone by now (stopped by hand) must not hang the run after its tests.
    try:
        asyncio.run(asyncio.wait_for(delete_test_topics(broker.bootstrap), 60))
    except Exception as exc:
        print(f"test topics not deleted: {type(exc).__name__} {exc}")
    if broker.started_here:
        broker.stop()


TEST_TOPIC = re.compile(r"^t([0-9a-f]{8})\.")
TAGS: set[str] = set()  # this run's: other runs may share the broker, and their topics stay


async def delete_test_topics(bootstrap: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics()
                  if (m := TEST_TOPIC.match(t)) and m.group(1) in TAGS]
        for i in range(0, len(topics), 100):
            await admin.delete_topics(topics[i:i + 100])
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL from Debian's packages (tools/postgres.sh), or BEACON_TEST_POSTGRES_URL.
    A server this run started is stopped when the session ends."""
    if url := os.environ.get("BEACON_TEST_POSTGRES_URL"):
        yield url
        return
    import subprocess

    script = str(Path(__file__).resolve().parents[1] / "tools" / "postgres.sh")
    result = subprocess.run([script, "start"], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        message = f"no PostgreSQL could be started: {result.stderr[-500:]}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield result.stdout.strip().splitlines()[-1]
    if "already answers" not in result.stdout:
        subprocess.run([script, "stop"], capture_output=True, timeout=120)


def make_settings(kafka: str, database_url: str, inbox=None, **overrides):
    """Settings with this test's own topics and groups; with `inbox`, deliveries go to it."""
    from services.common.config import Settings

    tag = uuid.uuid4().hex[:8]
    TAGS.add(tag)
    values = dict(
        kafka_bootstrap=kafka, database_url=database_url, topic_prefix=f"t{tag}.",
        consumer_group_prefix=f"t{tag}", secret_key="test-secret-key",
        webhook_secret="test-webhook-secret", timer_interval_s=0.1,
    )
    if inbox is not None:
        values.update(demo_webhook_base=inbox.http_url, smtp_port=inbox.smtp_port,
                      sms_gateway_url=inbox.http_url + "/sms")
    values.update(overrides)
    return Settings(**values)


async def migrate(url: str) -> None:
    from services.common.migrate import upgrade

    await asyncio.to_thread(upgrade, url)  # Alembic runs its own event loop


@pytest_asyncio.fixture
async def sqlite_db(tmp_path):
    """A migrated SQLite database of this test's own, as services.common.db.Database."""
    from services.common.db import Database

    url = f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}"
    await migrate(url)
    db = Database(url)
    yield db
    await db.dispose()


class _NoRelay:
    """The outbox relay's place: in-process tests read what was emitted from the outbox."""

    def poke(self) -> None:
        pass


@pytest_asyncio.fixture
async def esc(sqlite_db):
    """The escalation service on a database of its own (no broker), the default pack in force:
    inputs go straight to Escalation.handle; what it emits stays in the outbox to be read."""
    from types import SimpleNamespace

    from services.common.config import Settings
    from services.escalation.directory import build_directory
    from services.escalation.handlers import Escalation
    from services.escalation.rulepack import load_pack

    pack = load_pack("default")
    return Escalation(SimpleNamespace(settings=Settings(), db=sqlite_db, pack=pack,
                                      directory=build_directory(pack),
                                      relays={"escalation": _NoRelay()}))


@pytest.fixture
def inbox(tmp_path):
    from tools.inbox import Inbox

    with Inbox(tmp_path / "inbox") as box:
        yield box


@dataclass
class Stack:
    """A running Beacon process (in this event loop) and an HTTP client for it."""

    rt: object
    base_url: str
    tokens: dict
    server: object
    task: asyncio.Task

    def client(self, role: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30)

    async def stop(self) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 60)
        except TimeoutError:
            self.task.cancel()  # a hung shutdown must not hang the suite; say so
            raise AssertionError("the Beacon process did not stop within 60 s") from None


async def start_stack(settings, services=("intake", "escalation", "notifier")) -> Stack:
    import uvicorn

    from services.common.logging import configure

    configure("INFO")  # JSON logs with redaction, as in production
    from services import runtime
    from services.app import create_app
    from services.common.http_limits import BoundedHttpToolsProtocol
    from services.common import auth
    from tests.support.brokers import free_port

    await migrate(settings.database_url)
    rt = runtime.build(settings, frozenset(services))
    tokens = {}
    async with rt.db.writes() as session, session.begin():
        for role, scope, authorities in (
            ("operator", "national", []), ("supervisor", "national", []),
            ("authority", "commune:4", ["commune:4:child_protection", "commune:4:police"]),
            ("authority_elsewhere", "commune:7", ["commune:7:child_protection"]),
            ("admin", "national", []), ("auditor", "national", []),
        ):
            if await session.get(auth.User, f"test-{role}") is None:  # a second stack, same db
                await auth.create_user(session, f"test-{role}", role, role.split("_")[0], scope,
                                       authorities)
                await session.flush()
            tokens[role] = await auth.issue_token(session, f"test-{role}")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port,
                                           log_config=None, lifespan="on",
                                           http=BoundedHttpToolsProtocol))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("server exited during start-up")
        await asyncio.sleep(0.05)
    return Stack(rt, f"http://127.0.0.1:{port}", tokens, server, task)


@pytest_asyncio.fixture
async def stack(kafka_bootstrap, inbox, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}",
                             inbox)
    running = await start_stack(settings)
    yield running
    await running.stop()


async def eventually(check, timeout: float = 30, interval: float = 0.2):
    """Poll `check` (async, returns a truthy value when done) until it is, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout} s: {getattr(check, '__name__', check)}")
        await asyncio.sleep(interval)
