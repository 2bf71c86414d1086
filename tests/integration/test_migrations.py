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


def test_an_upgrade_fills_in_which_authorities_still_owe_an_answer(tmp_path):
    """The case list asks case_authorities whether an authority still owes its acknowledgement:
    cases read before the columns existed must answer as the read model now keeps them."""
    import json

    from sqlalchemy import create_engine, text

    from services.common.migrate import upgrade

    path = tmp_path / "beacon.db"
    upgrade(f"sqlite+aiosqlite:///{path}", "b8e3f0a6c9d2")
    due = "2026-11-30T10:15:00+00:00"
    targets = [
        {"authority_id": "a:owes", "role": "act", "ack_due": due, "acknowledged_at": None},
        {"authority_id": "a:answered", "role": "act", "ack_due": due, "acknowledged_at": due},
        {"authority_id": "a:passed", "role": "act", "ack_due": due, "acknowledged_at": None,
         "transferred_to": "a:owes"},
        {"authority_id": "a:told", "role": "inform", "ack_due": None, "acknowledged_at": None},
    ]
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO cases (case_id, category, province_code, commune_code, setting, status,"
            " first_received_at, last_received_at, report_count, independent_reports,"
            " acknowledged, targets, child_fingerprints, updated_at) VALUES ('C-1', 'NEGLECT',"
            " 1, 4, 'home', 'open', :t, :t, 1, 1, 0, :targets, '[]', :t)"),
            {"t": "2026-11-30 10:00:00", "targets": json.dumps(targets)})
        for t in targets:
            conn.execute(text("INSERT INTO case_authorities (case_id, authority_id)"
                              " VALUES ('C-1', :a)"), {"a": t["authority_id"]})
    upgrade(f"sqlite+aiosqlite:///{path}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT authority_id, awaiting, ack_due FROM case_authorities"
                                 " ORDER BY authority_id")).all()
    engine.dispose()
    assert [(a, bool(w), d is not None) for a, w, d in rows] == [
        ("a:answered", False, False), ("a:owes", True, True), ("a:passed", False, False),
        ("a:told", False, False)]


def test_an_upgrade_fills_in_every_category_a_cases_reports_gave(tmp_path):
    """`?category=` asks case_categories: a case opened before it existed, as neglect, that
    took a linked report of sexual abuse is found by either (from its timeline)."""
    import json

    from sqlalchemy import create_engine, text

    from services.common.migrate import upgrade

    path = tmp_path / "beacon.db"
    upgrade(f"sqlite+aiosqlite:///{path}", "a4c8e2f6b1d9")
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        for case_id in ("C-1", "C-2"):
            conn.execute(text(
                "INSERT INTO cases (case_id, category, province_code, commune_code, setting,"
                " status, first_received_at, last_received_at, report_count,"
                " independent_reports, acknowledged, targets, child_fingerprints, updated_at)"
                " VALUES (:c, 'NEGLECT', 1, 4, 'home', 'open', :t, :t, 1, 1, 0, '[]', '[]', :t)"),
                {"c": case_id, "t": "2026-11-30 10:00:00"})
        for n, (case_id, kind, detail) in enumerate((
                ("C-1", "report_received", {"report_id": "R-1", "category": "NEGLECT"}),
                ("C-1", "report_received", {"report_id": "R-2", "category": "SEX_ABUSE"}),
                ("C-1", "case_decided", {"severity": "P1"}),
                ("C-2", "report_received", {"report_id": "R-3", "category": "NEGLECT"}))):
            conn.execute(text("INSERT INTO timeline (case_id, at, kind, detail, event_id)"
                              " VALUES (:c, :t, :k, :d, :e)"),
                         {"c": case_id, "t": "2026-11-30 10:00:00", "k": kind,
                          "d": json.dumps(detail), "e": f"e-{n}"})
    upgrade(f"sqlite+aiosqlite:///{path}")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT case_id, category FROM case_categories"
                                 " ORDER BY case_id, category")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("C-1", "NEGLECT"), ("C-1", "SEX_ABUSE"),
                                        ("C-2", "NEGLECT")]
