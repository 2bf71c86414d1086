"""Every process follows the compacted rule-pack topic and switches packs without a restart.

Each instance reads the whole topic with its own consumer (no group: every instance must see every
publication). The pack in force is the published one with the latest effective time not in the
future; a publication of an earlier version with a later effective time is a rollback. The same
loop refreshes the admins' directory entries from the database.
"""

import asyncio
from datetime import datetime

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import select

from schemas.events import Envelope, RulePackPublished, Topics
from services.common.db import log_failure, utcnow
from services.escalation.directory import build_directory
from services.escalation.packs_store import RulePackPublication, RulePackVersion
from services.escalation.rulepack import RulePackError, parse_pack

log = structlog.get_logger("beacon.rulepacks")
POLL_MS = 200
CHECK_S = 0.5


def in_force(publications: dict[str, tuple[str, RulePackPublished]],
             now: datetime) -> tuple[str, RulePackPublished] | None:
    """(event id, publication) in force at `now`: the latest effective time not after now; a
    tie goes to the later publication."""
    due = [p for p in publications.values() if p[1].effective_at <= now]
    return max(due, key=lambda p: (p[1].effective_at, p[1].published_at), default=None)


class PackWatcher:
    def __init__(self, rt):
        self.rt = rt
        self.publications: dict[str, tuple[str, RulePackPublished]] = {}  # by version
        self.current: str | None = None  # event id of the publication in force
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Read the topic to its end, so that a starting instance decides under the pack in
        force from its first event, not the configured one."""
        s = self.rt.settings
        configured = self.rt.pack.version
        topic = s.topic(Topics.RULEPACKS)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap, group_id=None,
                                         enable_auto_commit=False, auto_offset_reset="earliest")
        await self.consumer.start()
        partitions = [TopicPartition(topic, 0)]  # the topic has one partition (kafka.ensure_topics)
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)
        end = await self.consumer.end_offsets(partitions)
        for tp in partitions:
            while await self.consumer.position(tp) < end[tp]:
                await self._poll()
        await self._recorded()
        await self.apply_due()
        if self.rt.pack.version != configured:
            # An admin who changed the setting and restarted would otherwise wait for a pack
            # that never comes: a publication wins over the setting, by the two-person rule.
            log.warning("rulepack_setting_not_in_force", configured=configured,
                        in_force=self.rt.pack.version,
                        why="a published pack is in force; BEACON_RULEPACK applies only until "
                            f"the first publication (put it in force: beacon rules rollback {configured})")

    async def _recorded(self) -> None:
        """Publications the database records but the topic no longer holds (the broker's data
        lost, the topics made again): without them the configured pack came back in force,
        undoing in silence what two admins had approved and published. A publication is
        recorded only once it is on Kafka, so the database never adds one Kafka did not have."""
        async with self.rt.db.reads() as session:
            rows = (await session.execute(
                select(RulePackPublication, RulePackVersion)
                .join(RulePackVersion, RulePackVersion.version == RulePackPublication.version)
                .order_by(RulePackPublication.id))).all()
        for pub, version in rows:
            known = self.publications.get(pub.version)
            if known is not None and known[1].published_at >= pub.published_at:
                continue
            self.publications[pub.version] = (pub.event_id, RulePackPublished(
                version=pub.version, sha256=version.sha256, text=version.text,
                effective_at=pub.effective_at, published_at=pub.published_at,
                published_by=pub.published_by, approved_by=version.approved_by,
                reevaluate_open=pub.reevaluate_open))
            log.warning("rulepack_publication_from_database", version=pub.version,
                        why="recorded as published but not on the rulepacks topic")

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last = 0.0
        while True:
            try:
                await self._poll()
                if loop.time() - last >= CHECK_S:
                    last = loop.time()
                    await self.apply_due()
                    await self._refresh_directory()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, "rulepack_watch_failed", exc)  # the database or broker away
                await asyncio.sleep(1)

    async def _poll(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=POLL_MS)
        for records in batch.values():
            for record in records:
                try:
                    envelope = Envelope.model_validate_json(record.value)
                    data = envelope.payload()
                except Exception as exc:  # a foreign record: skip it, say so
                    log.warning("rulepack_record_unreadable", offset=record.offset,
                                error=type(exc).__name__)
                    continue
                if isinstance(data, RulePackPublished):
                    self.publications[data.version] = (envelope.id, data)
        if batch:
            await self.apply_due()

    async def apply_due(self) -> None:
        chosen = in_force(self.publications, utcnow())
        if chosen is None or chosen[0] == self.current:
            return
        event_id, pub = chosen
        try:
            pack = parse_pack(pub.text, f"rulepack {pub.version}")
        except RulePackError as exc:
            log.error("published_rulepack_invalid", version=pub.version, error=str(exc)[:300])
            self.current = event_id  # do not retry a bad one every half second
            return
        rt = self.rt
        base = build_directory(pack, webhook_base=rt.settings.demo_webhook_base)
        previous = rt.pack.version
        rt.pack = pack
        if hasattr(rt.directory, "base"):
            rt.directory.base = base
        else:
            rt.directory = base
        self.current = event_id
        log.info("rulepack_in_force", version=pack.version, previous=previous,
                 effective_at=pub.effective_at.isoformat())
        escalation = rt.parts.get("escalation")
        if pub.reevaluate_open and escalation is not None:
            await escalation.reevaluate_open(event_id)

    async def _refresh_directory(self) -> None:
        refresh = getattr(self.rt.directory, "refresh", None)
        if refresh is not None:
            async with self.rt.db.reads() as session:
                if await refresh(session):
                    log.info("directory_entries_reloaded", count=len(self.rt.directory.entries))
