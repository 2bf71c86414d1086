"""The database: one async engine per process, SQLite (embedded default) or PostgreSQL."""

import asyncio
import functools
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
from sqlalchemy import exc as sa_exc
from sqlalchemy import JSON, DateTime, MetaData, String, TypeDecorator, event, make_url
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import (
    AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.util import find_tables

from services.common import backoff


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on both SQLite (which forgets the zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime")
            value = value.astimezone(UTC)
        return value

    def bind_processor(self, dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value):
            # SQLite's own DATETIME text, which SQLAlchemy formats through a %-dict at about
            # three times the cost: timers, targets and deliveries bind several per row.
            if value is None:
                return None
            return self.process_bind_param(value, dialect).replace(tzinfo=None).isoformat(
                " ", "microseconds")

        return process

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON(), list: JSON()}


_BULK = "beacon.bulk_rows"


def add_bulk(session: AsyncSession, model: type["Base"], **values) -> None:
    """`session.add(model(**values))` for a row that this transaction inserts and never
    changes (an outbox event, a timer, an audit record): rows are INSERTed per table in one
    statement before the transaction's next query, or at commit. A flushed ORM object costs
    about 150 µs here, a row of a bulk INSERT about 25 (docs/performance.md)."""
    session.sync_session.info.setdefault(_BULK, []).append((model.__table__, values))


@event.listens_for(Session, "do_orm_execute")
def _bulk_before_query(state) -> None:
    """Rows go in before a statement on their table, so that it sees them; a statement on
    other tables leaves them queued, so that group commit's works share one INSERT."""
    rows = state.session.info.get(_BULK)
    if rows:
        tables = _tables(state.statement)
        if not tables or any(table in tables for table, _ in rows):
            _insert_bulk(state.session)


@functools.lru_cache(maxsize=1024)
def _tables(statement) -> frozenset:
    """The tables a statement reads or writes; empty when unknown (text), which flushes."""
    return frozenset(find_tables(statement, include_crud=True, include_joins=True))


@event.listens_for(Session, "before_commit")
def _bulk_at_commit(session: Session) -> None:
    _insert_bulk(session)


@event.listens_for(Session, "after_soft_rollback")
def _bulk_dropped(session: Session, _transaction) -> None:
    session.info.pop(_BULK, None)  # all of them: Beacon uses no savepoints


def _insert_bulk(session: Session) -> None:
    rows = session.info.pop(_BULK, None)
    if not rows:
        return
    per_table: dict = {}  # tables in order of first appearance; rows in order within a table
    for table, values in rows:
        per_table.setdefault(table, []).append(values)
    connection = session.connection()
    for table, group in per_table.items():
        columns = _insert_columns(table)
        connection.execute(table.insert(), [
            {key: values.get(key, default) for key, default in columns} for values in group])


@functools.cache
def _insert_columns(table) -> list[tuple[str, object]]:
    """(attribute, scalar default) per column, the autoincrement key left to the database."""
    return [(c.key, c.default.arg if c.default is not None and c.default.is_scalar else None)
            for c in table.columns if c is not table.autoincrement_column]


class ProcessedEvent(Base):
    """Inbox: which consumer has applied which event, so redelivery applies nothing twice."""

    __tablename__ = "processed_events"
    consumer: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    processed_at: Mapped[datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class InlineSQLite(aiosqlite.Connection):
    """An aiosqlite connection that runs each call on the event loop, not on its thread.

    A statement takes SQLite microseconds; the hop to aiosqlite's thread and back costs a
    hundred times that, and a decision is dozens of calls (see docs/performance.md). The one
    wait SQLite can have, another writer's lock, stays asynchronous: the busy timeout is zero
    and a locked call is retried after a sleep, so the loop never blocks on another process.
    In-process writers never reach that wait: the write pool has one connection.
    """

    LOCK_WAIT = 30.0  # seconds, as a busy_timeout would

    async def _execute(self, fn, *args, **kwargs):
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        tries, waited = 0, 0.0
        while True:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or waited >= self.LOCK_WAIT:
                    raise
            tries += 1
            delay = backoff.exponential(tries, 0.001, 0.05)
            await asyncio.sleep(delay)
            waited += delay


def make_engine(url: str, immediate: bool = True) -> AsyncEngine:
    """An engine; on SQLite `immediate` makes every transaction take the write lock at BEGIN, so
    two writers queue instead of failing on a lock upgrade. Readers use immediate=False, and
    the writer's pool has one connection, so this process's writers queue on the pool."""
    if not url.startswith("sqlite"):
        # A request has 5 s (intake's budget): waiting 30 s for a connection, SQLAlchemy's
        # default, turned an overload into 500s after the caller had gone. Parameters are kept
        # out of error messages: they hold token hashes and sealed identity, and errors are logged.
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True,
                                   pool_timeout=5, hide_parameters=True)
    path = make_url(url).database or ":memory:"
    memory = path == ":memory:"  # one shared connection already (StaticPool)
    if not memory:
        create_private(path)

    async def connect():
        # isolation_level=None: SQLAlchemy's "begin" below issues BEGIN itself
        conn = InlineSQLite(
            lambda: sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0),
            iter_chunk_size=64,
        )
        return await conn

    if memory:
        pool = {}
    elif immediate:
        pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 60}
    else:  # kept open: an overflow connection closed on return costs a thread and a connect
        pool = {"pool_size": 16, "max_overflow": 0, "pool_timeout": 60}
    engine = create_async_engine(url, async_creator=connect, hide_parameters=True, **pool)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers run beside the one writer
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def create_private(path: str | Path) -> None:
    """Create the SQLite file owner-only (0600) if it is missing. sqlite3 would make it 0644,
    readable by every account on the machine, and it holds sealed identity, token hashes and
    the audit trail. SQLite gives its -wal and -shm files the database file's mode, so they
    are 0600 too. An empty file is an empty SQLite database. A missing directory is made
    0700 (var/ by default: it holds the development secrets too)."""
    from services.common.files import private_dir

    private_dir(Path(path).parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # its mode is the operator's: runtime.warn_database_mode says if it is wider


class Database:
    """`writes` for transactions that change state; `reads` for queries (concurrent on SQLite)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        self.writes = async_sessionmaker(self.engine, expire_on_commit=False)
        if url.startswith("sqlite"):
            self.read_engine = make_engine(url, immediate=False)
        else:
            self.read_engine = self.engine
        self.reads = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._disposed = False

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncConnection]:
        """A read connection for Core statements on a request's hot path: no ORM session, whose
        set-up, identity map and close cost several times the query (docs/performance.md)."""
        async with self.read_engine.connect() as connection:
            yield connection

    async def is_up(self, timeout_s: float = 2.0) -> bool:
        """Whether the database answers a trivial query now (a consumer's outage test). Once
        disposed, no: a probe must not open a connection that nothing would close."""
        if self._disposed:
            return False
        try:
            async with asyncio.timeout(timeout_s), self.read_engine.connect() as connection:
                await connection.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        self._disposed = True
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def claim_events(session: AsyncSession, consumer: str, event_ids: list[str]) -> set[str]:
    """Record that `consumer` applies these events in this transaction; returns the ones it had
    not applied before (a batch's repeats and earlier deliveries are left out).

    INSERT .. ON CONFLICT DO NOTHING, not a read then an insert: on PostgreSQL a concurrent
    transaction claiming the same event makes this one wait for it and then see the conflict,
    so two paths applying one event (intake's request and its own consumer) never both do.
    """
    ids = sorted(set(event_ids))  # one order, so two PostgreSQL claimers cannot deadlock
    if not ids:
        return set()
    now = utcnow()
    # The rows as parameters, not in the statement: a statement with its values built in
    # cannot be cached and was compiled afresh each time (about 1.5 ms here).
    result = await session.execute(
        _CLAIM[session.get_bind().dialect.name],
        [{"consumer": consumer, "event_id": i, "processed_at": now} for i in ids])
    return set(result.scalars().all())


# On the table, not the class: a statement naming mapped attributes takes the ORM's bulk path,
# which cost more than the insert itself (docs/performance.md). So do the others built once.
_PROCESSED = ProcessedEvent.__table__
_CLAIM = {name: insert(_PROCESSED).on_conflict_do_nothing().returning(_PROCESSED.c.event_id)
          for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))}


async def claim_event(session: AsyncSession, consumer: str, event_id: str) -> bool:
    """claim_events for one event: False if `consumer` has applied it before."""
    return bool(await claim_events(session, consumer, [event_id]))


# Errors that are the database's state, never a message's: it is full, locked, read-only (a
# replica after a failover), out of connections or going away. Reads may still answer, so the
# consumer's `SELECT 1` probe alone would count them against good messages and dead-letter them.
_SQLITE_FAULTS = ("database is locked", "database or disk is full", "disk i/o error",
                  "readonly database", "unable to open database file")
_PG_FAULT_CLASSES = ("08", "53", "57")  # connection; insufficient resources; operator action
_PG_FAULTS = {"25006", "40001", "40P01", "55P03"}  # read-only; serialisation; deadlock; lock


def log_failure(log, event: str, exc: BaseException, **fields) -> None:
    """A background loop's failure: with the database away, one short warning (the loop says
    it again each try, so a traceback each made megabytes a minute); else the traceback."""
    if database_fault(exc):
        log.warning(event, database="unavailable", error=type(exc).__name__, **fields)
    else:
        log.error(event, exc_info=exc, **fields)


def database_fault(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is the database's fault rather than the input's."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        code = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(code, str) and (code[:2] in _PG_FAULT_CLASSES or code in _PG_FAULTS):
            return True
        if isinstance(e, sqlite3.OperationalError) and any(
                fault in str(e).lower() for fault in _SQLITE_FAULTS):
            return True
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        # No connection free in time, or one broken under us (asyncpg's "another operation
        # is in progress" after a cancelled query comes as an InternalError).
        if isinstance(e, sa_exc.TimeoutError | sa_exc.InterfaceError | sa_exc.InternalError) \
                or getattr(e, "connection_invalidated", False):
            return True
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return False

