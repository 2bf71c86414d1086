"""The migrations build the schema the models declare: a model changed without its migration
would run against tables that lack its columns or indexes."""

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from services.common.db import Base
from services.models import load_all
from tests.conftest import migrate


async def schema_drift(url: str) -> list:
    """What Alembic's autogenerate would add to make the migrated database match the models."""
    load_all()
    await migrate(url)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata))
    finally:
        await engine.dispose()


async def test_the_migrations_match_the_models_on_sqlite(tmp_path):
    assert await schema_drift(f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}") == []


def test_a_model_without_its_migration_is_found(tmp_path):
    # The check itself can fail: an index the migrations do not create shows as drift.
    from sqlalchemy import Index

    from services.notifier.store import Delivery
    extra = Index("ix_deliveries_not_migrated", Delivery.__table__.c.case_id,
                  Delivery.__table__.c.status)
    try:
        drift = asyncio.run(schema_drift(f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}"))
    finally:
        Delivery.__table__.indexes.discard(extra)
    assert [d[0] for d in drift] == ["add_index"]
