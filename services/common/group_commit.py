"""Group commit: many callers' small transactions written as one.

A transaction's fixed cost (a connection, BEGIN, COMMIT and its write to disk) is most of the
cost of a small write here. Callers hand in `work(session)`; the work queued while the previous
group was being written goes into the next one, run one after another in a single transaction,
and each caller gets its own result once that transaction is committed. Should the shared
transaction fail, each piece of work runs again in a transaction of its own, so one bad write
(a duplicate key, say) fails only its caller. Work must therefore be database work only.

Given `write(session, items) -> results`, callers hand in items instead, and the group is
written by one call, so that it can use set-based statements (the notifier's outcomes).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

Work = Callable[[AsyncSession], Awaitable[Any]]
Write = Callable[[AsyncSession, list], Awaitable[list]]


async def _each(session: AsyncSession, works: list[Work]) -> list:
    return [await work(session) for work in works]


class GroupCommit:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], gather_s: float = 0.0,
                 max_group: int = 256, write: Write = _each):
        self._sessions, self._write_items = sessions, write
        self._gather_s = gather_s  # 0: only the work that is ready now joins (one loop turn)
        self._max_group = max_group
        self._queue: list[tuple[Any, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, work: Any) -> Any:
        """`work`: a Work, or an item for the group's `write`."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): the old one's writer is gone
            self._loop, self._queue, self._writer = loop, [], None
        future = loop.create_future()
        self._queue.append((work, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Write groups while work is queued. A task of its own, not the first caller's turn: a
        caller that gives up does not leave the others' work unwritten, and callers whose work
        is done need no turn at a lock (with hundreds waiting, handing it on took longer than
        the writes)."""
        while self._queue:
            if len(self._queue) < self._max_group:  # a full group need not wait for more
                await asyncio.sleep(self._gather_s)
            group = self._queue[:self._max_group]
            del self._queue[:self._max_group]
            await self._write(group)

    async def _write(self, group: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            try:
                async with self._sessions() as session, session.begin():
                    results = await self._write_items(session, [work for work, _ in group])
            except Exception as exc:
                if len(group) == 1:
                    _settle(group[0][1], exc=exc)
                    return
                for work, future in group:  # each alone: the failure is its owner's
                    try:
                        async with self._sessions() as session, session.begin():
                            [result] = await self._write_items(session, [work])
                    except Exception as alone:
                        _settle(future, exc=alone)
                    else:
                        _settle(future, result)
                return
            for (_, future), result in zip(group, results, strict=True):
                _settle(future, result)
        finally:
            for _, future in group:
                if not future.done():
                    future.cancel()


def _settle(future: asyncio.Future, result: Any = None, exc: Exception | None = None) -> None:
    if future.done():  # its caller gave up; the work was written all the same
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
