"""Reading what the services publish: a whole topic from a real broker, and a stand-in broker for
unit tests of services.common.kafka.consume."""

from aiokafka import AIOKafkaConsumer

from schemas.events import Envelope


async def read_all(settings, topic: str) -> list[Envelope]:
    """Every envelope on `topic` (named without the test's prefix), once nothing new comes."""
    consumer = AIOKafkaConsumer(settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out = []
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            idle = 0 if batch else idle + 1
            out += [Envelope.model_validate_json(r.value) for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    return out


class FakeBroker:
    """Just enough of a KafkaBroker for services.common.kafka.consume: it keeps the handler and
    records publishes (dead letters)."""

    def __init__(self):
        self.published: list[dict] = []
        self.handler = None

    def subscriber(self, *topics, **options):
        def register(fn):
            self.handler = fn
            return fn
        return register

    async def publish(self, body, **kw):
        self.published.append({"body": body, **kw})
