"""The database restored from a backup taken while Beacon ran: the reports and acknowledgements
that came after the backup are on Kafka, and the consumer groups' offsets are past them. They
must be read again, not skipped: a report accepted after the backup was never decided again,
its case answered 404, and its authorities were never chased."""

import shutil
import sqlite3

from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from services import runtime
from services.common import positions
from services.common.positions import ConsumerPosition
from services.escalation.store import EscalationCase, EscalationTarget
from tests.conftest import eventually, make_settings, start_stack
from tests.support.reports import report

CP = "commune:4:child_protection"


async def _report(stack, n: int) -> str:
    async with stack.client("operator") as api:
        answer = await api.post("/api/v1/reports", json=report(
            children=[{"age": 5, "name": f"Restore Child {n}"}]))
    assert answer.status_code == 202, answer.text
    return answer.json()["case_id"]


async def _target(stack, case_id: str) -> EscalationTarget | None:
    async with stack.rt.db.reads() as session:
        return await session.get(EscalationTarget, (case_id, CP))


async def _acked(stack, case_id: str) -> bool:
    row = await _target(stack, case_id)
    return row is not None and row.acked_at is not None


async def _shown(stack, case_id: str) -> bool:
    async with stack.client("supervisor") as api:
        return (await api.get(f"/api/v1/cases/{case_id}")).status_code == 200


async def _restored(settings, tmp_path, after_backup=None) -> tuple[str, str]:
    """A stack takes a report, is backed up online (as `sqlite3 .backup` does), takes another
    report (and whatever `after_backup(stack, first_case)` does), stops, and its database is
    replaced by the backup. Returns the case ids from before and after the backup."""
    path, backup = tmp_path / "beacon.db", tmp_path / "backup.db"
    first = await start_stack(settings)
    try:
        before = await _report(first, 1)
        await eventually(lambda: _shown(first, before))
        with sqlite3.connect(path) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)
        after = await _report(first, 2)
        await eventually(lambda: _shown(first, after))
        if after_backup is not None:
            await after_backup(first, before)
    finally:
        await first.stop()
    for name in ("beacon.db", "beacon.db-wal", "beacon.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    shutil.copy(backup, path)
    return before, after


async def _decided(stack, case_id: str) -> str | None:
    async with stack.rt.db.reads() as session:
        return await session.scalar(select(EscalationCase.case_id).where(
            EscalationCase.case_id == case_id))


async def test_a_restored_database_reads_again_what_came_after_its_backup(
        kafka_bootstrap, inbox, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}",
                             inbox)

    async def acknowledge(first, case_id):  # the commune acknowledges the first case
        async def routed():  # shown is not yet routed: the decision may still be on its way
            async with first.client("supervisor") as api:
                case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            return any(t["authority_id"] == CP for t in case["targets"])
        await eventually(routed)
        async with first.client("authority") as api:
            ack = await api.post(f"/api/v1/cases/{case_id}/acknowledgements",
                                 json={"authority_id": CP})
            assert ack.status_code == 202, ack.text
        await eventually(lambda: _acked(first, case_id))

    before, after = await _restored(settings, tmp_path, acknowledge)
    second = await start_stack(settings)
    try:
        await eventually(lambda: _decided(second, after))
        await eventually(lambda: _shown(second, after))
        await eventually(lambda: _acked(second, before))  # applied again
    finally:
        await second.stop()


async def test_positions_behind_the_group_are_read_again_with_another_process_running(
        kafka_bootstrap, inbox, tmp_path):
    """An older release's process commits offsets and writes no positions (a rolling
    upgrade), or the database was restored under a running process: a process starting then is
    not refused; the partitions it is assigned are read again from the database's positions."""
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}",
                             inbox)
    running = await start_stack(settings)
    other = None
    try:
        case_id = await _report(running, 3)
        await eventually(lambda: _shown(running, case_id))
        group, inputs = settings.group("escalation"), settings.topic("beacon.inputs")

        async def positions() -> dict:
            async with running.rt.db.reads() as session:
                return {r.partition: r.next_offset for r in (await session.scalars(
                    select(ConsumerPosition).where(ConsumerPosition.group_id == group,
                                                   ConsumerPosition.topic == inputs))).all()}

        async def applied():
            found = await positions()
            return any(found.values()) and found
        before = await eventually(applied)
        async with running.rt.db.writes() as session, session.begin():
            await session.execute(update(ConsumerPosition).where(
                ConsumerPosition.group_id == group).values(next_offset=0))
        other = runtime.build(settings, frozenset({"escalation"}))
        await runtime.start(other)  # the group rebalances: both processes are assigned anew

        async def caught_up():  # no new input: only reading it again brings them back
            now = await positions()
            return all(now.get(p, 0) >= n for p, n in before.items())
        await eventually(caught_up, timeout=60)
    finally:
        if other is not None:
            await runtime.stop(other)
        await running.stop()


async def test_a_restored_database_that_does_not_answer_at_first_is_waited_for(
        kafka_bootstrap, inbox, tmp_path, monkeypatch):
    """The database away when partitions were assigned: the listener failed, and the consumers
    went on from Kafka's offsets, skipping for good what the restored database never saw."""
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}",
                             inbox)
    _, after = await _restored(settings, tmp_path)
    rewind, refused = positions.Rewind._rewind, []

    async def away_at_first(self, consumer, assigned):
        if self.group_id == settings.group("escalation") and len(refused) < 2:
            refused.append(self.group_id)
            raise OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))
        return await rewind(self, consumer, assigned)
    monkeypatch.setattr(positions.Rewind, "_rewind", away_at_first)
    second = await start_stack(settings)
    try:
        await eventually(lambda: _decided(second, after))
        assert len(refused) == 2
    finally:
        await second.stop()
