"""One process's wiring: configuration, database, broker, rule pack, and the chosen services.

`beacon run all` runs every service here; `beacon run escalation` runs one. Start-up validates
configuration, the rule pack and the directory, and refuses to start with a clear message.
"""

import asyncio
from dataclasses import dataclass, field

import structlog
from faststream.kafka import KafkaBroker
from sqlalchemy import text

from schemas.events import Topics
from services.common import kafka
from services.common.config import ConfigError, Settings
from services.common.db import Database
from services.common.outbox import Relay

log = structlog.get_logger("beacon")
SERVICES = ("intake", "escalation", "notifier")


@dataclass
class Runtime:
    settings: Settings
    services: frozenset[str]
    db: Database
    broker: KafkaBroker
    pack: object
    directory: object
    vault: object = None
    relays: dict[str, Relay] = field(default_factory=dict)
    parts: dict[str, object] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)


def build(settings: Settings, services: frozenset[str]) -> Runtime:
    from services.escalation.directory import build_directory, validate_directory
    from services.escalation.rulepack import RulePackError, load_pack

    try:
        pack = load_pack(settings.rulepack)
    except RulePackError as exc:
        lines = "\n".join(f"  {place}: {msg}" for place, msg in exc.errors)
        raise ConfigError(f"rule pack {settings.rulepack!r} is invalid:\n{lines}") from None
    except FileNotFoundError:
        raise ConfigError(f"BEACON_RULEPACK: no rule pack at {settings.rulepack!r}") from None
    directory = build_directory(pack, webhook_base=settings.demo_webhook_base)
    if problems := validate_directory(directory, pack):
        raise ConfigError("authority directory is invalid:\n" + "\n".join(problems[:20]))
    rt = Runtime(settings=settings, services=services, db=Database(settings.database_url),
                 broker=kafka.make_broker(settings), pack=pack, directory=directory)
    if "intake" in services:
        from services.intake.identity import IdentityVault

        rt.vault = IdentityVault(settings.secret("secret_key"))
        kafka.consume(rt.broker, settings, [Topics.INPUTS, Topics.CASES, Topics.ALERTS,
                                            Topics.DELIVERIES], "intake-readmodel", _readmodel(rt))
    if "escalation" in services:
        from services.escalation.handlers import Escalation

        rt.parts["escalation"] = esc = Escalation(rt)
        rt.relays["escalation"] = Relay("escalation", rt.db, rt.broker)
        kafka.consume(rt.broker, settings, [Topics.INPUTS, Topics.DELIVERIES], "escalation",
                      esc.handle)
    if "notifier" in services:
        from services.notifier.handlers import Notifier

        rt.parts["notifier"] = notifier = Notifier(rt)
        rt.relays["notifier"] = Relay("notifier", rt.db, rt.broker)
        kafka.consume(rt.broker, settings, [Topics.ALERTS], "notifier", notifier.handle)
    return rt


def _readmodel(rt: Runtime):
    from services.intake import readmodel

    async def apply(envelope):
        async with rt.db.writes() as session, session.begin():
            await readmodel.apply(session, envelope)

    return apply


async def check_database(rt: Runtime) -> None:
    async with rt.db.reads() as session:
        try:
            await session.execute(text("SELECT version_num FROM alembic_version"))
        except Exception as exc:
            raise ConfigError(
                f"database {rt.settings.database_url} is not migrated ({type(exc).__name__}): "
                "run `beacon db upgrade`") from None


async def start(rt: Runtime) -> None:
    await check_database(rt)
    try:
        await kafka.ensure_topics(rt.settings)
    except Exception as exc:
        raise ConfigError(f"Kafka at {rt.settings.kafka_bootstrap} is unreachable: {exc}") from None
    await rt.broker.start()
    if "intake" in rt.services:
        from services.intake import submission

        await submission.sweep(rt)
    for relay in rt.relays.values():
        rt.tasks.append(asyncio.create_task(relay.run(), name=f"relay-{relay.service}"))
    if esc := rt.parts.get("escalation"):
        rt.tasks.append(asyncio.create_task(_every(rt.settings.timer_interval_s, esc.fire_due),
                                            name="timers"))
    if notifier := rt.parts.get("notifier"):
        rt.tasks.append(asyncio.create_task(notifier.run(), name="deliveries"))
    log.info("started", services=sorted(rt.services), kafka=rt.settings.kafka_bootstrap,
             rulepack=rt.pack.version)


async def stop(rt: Runtime) -> None:
    for task in rt.tasks:
        task.cancel()
    await asyncio.gather(*rt.tasks, return_exceptions=True)
    rt.tasks.clear()
    await rt.broker.stop()
    if notifier := rt.parts.get("notifier"):
        await notifier.aclose()
    await rt.db.dispose()
    log.info("stopped", services=sorted(rt.services))


async def _every(interval_s: float, job) -> None:
    while True:
        try:
            while await job():
                pass  # a full batch: there may be more due right now
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("periodic_job_failed", job=getattr(job, "__qualname__", str(job)))
        await asyncio.sleep(interval_s)
