"""One process's wiring: configuration, database, broker, rule pack, and the chosen services.

`beacon run all` runs every service here; `beacon run escalation` runs one. Start-up validates
configuration, the rule pack and the directory, and refuses to start with a clear message.
"""

import asyncio
import gc
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from faststream.kafka import KafkaBroker
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import DBAPIError

from schemas.events import Topics
from services import backlog
from services.common import backoff, kafka, migrate
from services.common.config import ConfigError, Settings
from services.common.db import Database, log_failure
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
    producer: object = None  # intake's inputs and the outbox relays (made in start: needs a loop)
    inputs: object = None  # intake: requests' input writes, grouped (intake/submission.py)
    watcher: object = None  # follows the rule-pack topic and the directory entries
    relays: dict[str, Relay] = field(default_factory=dict)
    consumers: list[kafka.Consumer] = field(default_factory=list)  # their lag is watched
    matching: object = None  # intake: correlation.MatchLocks (api/reports.py)
    parts: dict[str, object] = field(default_factory=dict)
    tasks: list[asyncio.Task] = field(default_factory=list)


def build(settings: Settings, services: frozenset[str]) -> Runtime:
    from services.escalation.directory import build_directory, validate_directory
    from services.escalation.directory_admin import OverlayDirectory
    from services.escalation.pack_watcher import PackWatcher
    from services.escalation.rulepack import RulePackError, load_pack

    try:
        pack = load_pack(settings.rulepack)
    except RulePackError as exc:
        lines = "\n".join(f"  {place}: {msg}" for place, msg in exc.errors)
        raise ConfigError(
            f"BEACON_RULEPACK: rule pack {settings.rulepack!r} is invalid:\n{lines}") from None
    except FileNotFoundError:
        raise ConfigError(f"BEACON_RULEPACK: no rule pack at {settings.rulepack!r}") from None
    directory = build_directory(pack, webhook_base=settings.demo_webhook_base)
    if problems := validate_directory(directory, pack):
        raise ConfigError("authority directory is invalid:\n" + "\n".join(problems[:20]))
    rt = Runtime(settings=settings, services=services, db=Database(settings.database_url),
                 broker=kafka.make_broker(settings), pack=pack,
                 directory=OverlayDirectory(directory))
    rt.watcher = PackWatcher(rt)
    if "intake" in services:
        from services.intake import correlation, submission
        from services.intake.identity import IdentityVault

        current, *previous = settings.secret_keys()
        rt.vault = IdentityVault(current, previous)
        rt.inputs = submission.writer(rt.db)
        rt.matching = correlation.MatchLocks(rt.db)
        rt.consumers.append(kafka.consume(
            rt.broker, settings, [Topics.INPUTS, Topics.CASES, Topics.ALERTS, Topics.DELIVERIES],
            "intake-readmodel", _readmodel(rt), database_up=rt.db.is_up, db=rt.db))
    if "escalation" in services:
        from services.escalation.handlers import Escalation

        rt.parts["escalation"] = esc = Escalation(rt)
        rt.consumers.append(kafka.consume(rt.broker, settings, [Topics.INPUTS, Topics.DELIVERIES],
                                          "escalation", esc.handle, database_up=rt.db.is_up,
                                          db=rt.db))
    if "notifier" in services:
        from services.notifier.handlers import Notifier

        rt.parts["notifier"] = notifier = Notifier(rt)
        rt.consumers.append(kafka.consume(rt.broker, settings, [Topics.ALERTS], "notifier",
                                          notifier.handle, database_up=rt.db.is_up, db=rt.db))
    return rt


def _readmodel(rt: Runtime):
    from services.intake import readmodel, submission

    async def apply(envelopes):
        # Most inputs were applied already by the request that accepted them: a read skips
        # those without taking the write lock.
        envelopes = await readmodel.unapplied(rt.db, envelopes)
        if not envelopes:
            return
        async with rt.db.writes() as session, session.begin():
            await readmodel.apply_all(session, [(envelope, None) for envelope in envelopes])
        # An input of ours not applied by its request: one refused with 503 whose event the
        # broker took after all is accepted now, as the event on Kafka says. In a transaction
        # of its own, after the application is committed: see submission._withdraw.
        if inputs := [e.id for e in envelopes if e.source == submission.SOURCE]:
            async with rt.db.writes() as session, session.begin():
                await submission.adopt(session, inputs)

    return apply


def _retention(rt: Runtime):
    from services import retention

    async def purge() -> bool:
        await retention.purge(rt.db, rt.settings, rt.services)
        return False  # done until the next interval

    return purge


def _backlog(rt: Runtime):
    async def refresh_backlog() -> bool:  # named: a failure's log line says which job
        return await backlog.refresh(rt)

    return refresh_backlog


async def check_database(db: Database, migrated: bool = True) -> None:
    """Refuse, with a message, a database that does not answer within DATABASE_WAIT_S, or
    (`migrated`) one that has not been migrated. The URL is shown without its password."""
    shown = make_url(db.url).render_as_string(hide_password=True)
    try:
        async with asyncio.timeout(DATABASE_WAIT_S):
            async with db.reads() as session:
                await session.execute(text("SELECT 1"))
    except Exception as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
        raise ConfigError(f"database {shown} cannot be reached: {type(cause).__name__} "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}".rstrip()) from None
    if not migrated:
        return
    async with db.reads() as session:
        try:
            at = set((await session.scalars(text("SELECT version_num FROM alembic_version"))).all())
        except Exception as exc:
            raise ConfigError(
                f"database {shown} is not migrated ({type(exc).__name__}): "
                "run `beacon db upgrade`") from None
    release = migrate.revisions()
    if at == release.heads:
        return
    if at <= release.known:
        # Started on it, the code would answer 500 to the first statement that reads a new
        # column, and say it was ready.
        raise ConfigError(f"database {shown} is at revision {', '.join(sorted(at)) or 'none'}, "
                          f"this release needs {', '.join(sorted(release.heads))}: "
                          "run `beacon db upgrade`")
    # Migrated by a newer release (a rolling upgrade, or a rollback of the code): migrations
    # add, so this release can still run on it.
    log.warning("database_newer_than_release", revision=sorted(at), heads=sorted(release.heads))


DATABASE_WAIT_S = 15


async def check_kafka(settings: Settings) -> None:
    """Creates the topics that are missing; refuses to start when the broker does not answer."""
    try:
        await asyncio.wait_for(kafka.ensure_topics(settings), 30)
    except Exception as exc:
        raise ConfigError(f"Kafka at {settings.kafka_bootstrap} is unreachable: "
                          f"{type(exc).__name__} {exc}") from None


async def check_alert_retention(settings: Settings) -> None:
    """A delivery row is how the notifier knows an alert was already delivered. Purged while the
    alerts topic still holds the alert, a replay of the topic (a consumer group whose offsets
    expired during a long stop, say) would deliver it to the authority again."""
    days = settings.retention_deliveries_days
    if not days:
        return  # the rows are kept for ever
    config = await kafka.topic_config(settings, Topics.ALERTS)
    kept_ms = int(config.get("retention.ms") or -1)
    if "compact" in config.get("cleanup.policy", "") or kept_ms < 0:
        kept = "for ever"
    elif kept_ms > days * 86_400_000:
        kept = f"{kept_ms / 86_400_000:g} days"
    else:
        return
    raise ConfigError(
        f"BEACON_RETENTION_DELIVERIES_DAYS is {days} days, but topic "
        f"{settings.topic(Topics.ALERTS)} keeps alerts {kept}: a replay of that topic would "
        "deliver again the alerts whose delivery rows were purged. Lower the topic's "
        "retention.ms below it, or raise BEACON_RETENTION_DELIVERIES_DAYS (0 keeps the rows "
        "for ever).")


async def check_identity_key(settings: Settings, db: Database) -> None:
    """The secret keys must open the identities already stored. A key changed without listing
    the old one in BEACON_SECRET_KEY_PREVIOUS started silently: every stored identity then
    read as unreadable, and repeat calls about a named child opened new cases."""
    from cryptography.fernet import InvalidToken

    from services.intake.identity import IdentityVault
    from services.intake.store import ReportRow

    async with db.reads() as session:
        newest = (await session.execute(
            select(ReportRow.report_id, ReportRow.identity)
            .where(ReportRow.identity.is_not(None))
            # Report ids begin with their time (correlation.new_id): the primary key's index
            # finds the newest at once, where created_at, not indexed, would scan the table.
            .order_by(ReportRow.report_id.desc()).limit(1))).one_or_none()
    if newest is None:
        return
    current, *previous = settings.secret_keys()
    try:
        IdentityVault(current, previous).open(newest.identity)
    except InvalidToken:
        raise ConfigError(
            f"BEACON_SECRET_KEY does not open the identities already stored (the newest is "
            f"report {newest.report_id}'s): if the key was changed, list the old one in "
            "BEACON_SECRET_KEY_PREVIOUS (docs/privacy.md, key rotation)") from None


async def preflight(settings: Settings, services: frozenset[str] = frozenset()) -> None:
    """What `beacon run` checks before serving, so that it exits with a message, not a trace."""
    db = Database(settings.database_url)
    try:
        await check_database(db)
        if "intake" in services:
            await check_identity_key(settings, db)
    finally:
        await db.dispose()
    await check_kafka(settings)
    if "notifier" in services:
        await check_alert_retention(settings)


def warn_database_mode(settings: Settings) -> str | None:
    """Say at start when the SQLite file is readable by other accounts on the machine (made
    before Beacon made it 0600, or widened since); returns its mode then. It is not changed:
    a mode someone set (a backup agent's group) is theirs to narrow."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    try:
        mode = stat.S_IMODE(os.stat(url.database).st_mode)
    except FileNotFoundError:
        return None
    if not mode & 0o077:
        return None
    log.warning("database_file_not_private", path=url.database, mode=f"{mode:04o}",
                why="other accounts can read its sealed identity, token hashes and audit trail: "
                    "chmod 600 it (docs/operations.md, Data protection at start)")
    return f"{mode:04o}"


def warn_identity_kept(settings: Settings, services: frozenset[str]) -> bool:
    """In production, say at intake's start that identity is kept for ever: how long is the
    operator's legal decision (docs/privacy.md), so it does not refuse to start."""
    if settings.env != "production" or "intake" not in services \
            or settings.retention_identity_days:
        return False
    log.warning("identity_retention_off", setting="BEACON_RETENTION_IDENTITY_DAYS", days=0,
                why="closed cases' identity (children, reporters, narratives) and override "
                    "reasons are kept for ever: set the number of days the law and your "
                    "data-protection assessment allow (docs/privacy.md, Retention)")
    return True


async def start(rt: Runtime) -> None:
    await check_database(rt.db)
    warn_database_mode(rt.settings)
    warn_identity_kept(rt.settings, rt.services)
    await check_kafka(rt.settings)
    rt.producer = kafka.make_producer(rt.settings)  # aiokafka wants a running loop
    await rt.producer.start()
    # Before the rule packs and the consumers: a pack in force may re-decide open cases, and
    # both poke the relay.
    for service in ("escalation", "notifier"):
        if service in rt.parts:
            rt.relays[service] = Relay(service, rt.db, rt.producer)
    await _rule_packs(rt)
    await rt.broker.start()
    if "intake" in rt.services:
        from services.intake import readmodel, submission

        # At start and then periodically: a request that died after storing its input (a crash,
        # a database error after the publish) leaves it pending while the process runs on.
        rt.tasks.append(asyncio.create_task(
            _every(submission.SWEEP_INTERVAL_S, lambda: submission.sweep(rt)), name="sweep"))
        if rt.db.engine.dialect.name == "postgresql":  # the race it mends is PostgreSQL's
            rt.tasks.append(asyncio.create_task(
                _every(readmodel.UNPARK_INTERVAL_S, lambda: readmodel.unpark_arrived(rt.db)),
                name="unpark"))
    rt.tasks.append(asyncio.create_task(rt.watcher.run(), name="rulepacks"))
    for relay in rt.relays.values():
        rt.tasks.append(asyncio.create_task(relay.run(), name=f"relay-{relay.service}"))
    if esc := rt.parts.get("escalation"):
        rt.tasks.append(asyncio.create_task(_every(rt.settings.timer_interval_s, esc.fire_due),
                                            name="timers"))
    if notifier := rt.parts.get("notifier"):
        rt.tasks.append(asyncio.create_task(notifier.run(), name="deliveries"))
    rt.tasks.append(asyncio.create_task(_every(backlog.REFRESH_S, _backlog(rt)), name="backlog"))
    if rt.services & {"intake", "notifier"}:  # the services with record classes to purge
        rt.tasks.append(asyncio.create_task(
            _every(rt.settings.retention_interval_s, _retention(rt)), name="retention"))
    _settle_heap()
    log.info("started", services=sorted(rt.services), kafka=rt.settings.kafka_bootstrap,
             rulepack=rt.pack.version)


def _settle_heap() -> None:
    """Keep the garbage collector off what start-up built, and run it less often.

    The start-up heap (modules, models, the rule pack, the authority directory) lives as long as
    the process, yet every full collection walked it again: 100-130 ms with the loop stopped, and
    a tenth to a seventh of the notifier's and escalation's CPU went to the collector. Frozen, it
    is not walked again; a first generation of 50,000 objects, not 700, suits handlers that each
    make thousands of short-lived ones (docs/performance.md, seventh round). A frozen object
    that start-up's state later drops (a replaced rule pack) is still freed by reference
    counting; only a reference cycle among such objects would stay, and they change rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _rule_packs(rt: Runtime) -> None:
    """The configured pack becomes a version one can roll back to; then the published pack in
    force (if any) replaces it before the first event is decided."""
    from sqlalchemy.exc import IntegrityError

    from services.escalation import packs_store
    from services.escalation.rulepack import SHIPPED

    path = SHIPPED.get(rt.settings.rulepack, rt.settings.rulepack)
    text = await asyncio.to_thread(Path(path).read_text, "utf-8")
    try:
        async with rt.db.writes() as session, session.begin():
            await packs_store.register_builtin(session, rt.pack, text)
    except IntegrityError:
        pass  # another process registered it first
    except packs_store.Refused as exc:
        raise ConfigError(f"BEACON_RULEPACK: {exc}") from None
    async with rt.db.reads() as session:
        await rt.directory.refresh(session)
    warn_demo_contacts(rt)
    await rt.watcher.start()


def warn_demo_contacts(rt: Runtime) -> int:
    """In production, say how many authorities still have the generated demo contacts: their
    alerts go to addresses nobody reads. Returns that number."""
    if rt.settings.env != "production":
        return 0
    ids = list(rt.directory.base.ids())
    entries = rt.directory.entries  # an entry saved from `directory show` may keep a demo contact
    demo = (sum(1 for aid in ids if aid not in entries)
            + sum(1 for e in entries.values() if any(c.demo for c in e.contacts)))
    if demo:
        log.warning("directory_demo_contacts", authorities=demo, of=len(ids),
                    why="their alerts go to the generated demo contacts, which nobody reads: set "
                        "their real contacts with `beacon directory set` (docs/admin.md)")
    return demo


async def stop(rt: Runtime) -> None:
    """Stop consuming first, so no handler is cut off mid-transaction; then the loops; each
    step bounded, so that a broker stuck in a rebalance cannot hold the process forever."""
    await _bounded("broker", rt.broker.stop(), 20)
    for task in rt.tasks:
        task.cancel()
    await _bounded("loops", asyncio.gather(*rt.tasks, return_exceptions=True), 10)
    rt.tasks.clear()
    if rt.producer is not None:  # after the relays, so that none is cut off mid-batch
        await _bounded("producer", rt.producer.stop(), 10)
    await _bounded("rulepack watcher", rt.watcher.stop(), 10)
    if notifier := rt.parts.get("notifier"):
        await _bounded("channels", notifier.aclose(), 10)
    await rt.db.dispose()
    log.info("stopped", services=sorted(rt.services))


async def _bounded(step: str, awaitable, seconds: float) -> None:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        log.warning("shutdown_step_timed_out", step=step, seconds=seconds)


async def _every(interval_s: float, job) -> None:
    failures = 0
    while True:
        try:
            while await job():
                pass  # it did something: there may be more due right now
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            log_failure(log, "periodic_job_failed", exc, attempt=failures,
                        job=getattr(job, "__qualname__", str(job)))
        # After failures, wait longer (up to 5 s): a database or broker away is not hammered.
        await asyncio.sleep(max(interval_s, backoff.exponential(failures, 2 * interval_s, 5.0)))
