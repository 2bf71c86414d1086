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
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, work: Any) -> Any:
        """`work`: a Work, or an item for the group's `write`."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (tests): a lock of the old one is no use
            self._loop, self._lock, self._queue = loop, asyncio.Lock(), []
        future = loop.create_future()
        self._queue.append((work, future))
        async with self._lock:
            if not future.done():
                if len(self._queue) < self._max_group:  # a full group need not wait for more
                    await asyncio.sleep(self._gather_s)
                group = self._queue[:self._max_group]
                del self._queue[:self._max_group]
                # Shielded: a caller cancelled now must not leave the others' work unwritten.
                await asyncio.shield(self._write(group))
        return await future  # done by now, or being written by a group whose leader gave up

    async def _write(self, group: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            try:
                async with self._sessions() as session, session.begin():
                    results = await self._write_items(session, [work for work, _ in group])
            except Exception as exc:
                if len(group) == 1:
                    group[0][1].set_exception(exc)
                    return
                for work, future in group:  # each alone: the failure is its owner's
                    try:
                        async with self._sessions() as session, session.begin():
                            [result] = await self._write_items(session, [work])
                    except Exception as alone:
                        future.set_exception(alone)
                    else:
                        future.set_result(result)
                return
            for (_, future), result in zip(group, results, strict=True):
                future.set_result(result)
        finally:
            for _, future in group:
                if not future.done():
                    future.cancel()
