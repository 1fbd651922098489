"""Dynamic batching: concurrent requests with the same key are decoded together.

A request waits in the group of its key. The worker takes the group whose first request is
oldest as soon as it is full (``max_batch``), its first request has waited ``wait_s``, or the
group must run alone; while the worker is busy with one batch, the next ones keep filling.
Batches run one at a time in one worker thread, off the event loop, so the server keeps
accepting requests while the model computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future[tuple[Any, int]]


@dataclass
class _Group:
    key: Hashable
    alone: bool
    arrived: float
    waiting: list[_Waiting] = field(default_factory=list)


class RequestBatcher:
    """``await submit(key, item)`` returns ``(result, batch size)``, where the result is
    ``run(key, items)[i]`` for the batch of items with that key that ``item`` was part of."""

    def __init__(
        self, run: Callable[[Hashable, list[Any]], list[Any]], max_batch: int, wait_s: float
    ) -> None:
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.batches = 0
        self.items = 0
        self._groups: list[_Group] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polycap-batch")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def submit(self, key: Hashable, item: Any, alone: bool = False) -> tuple[Any, int]:
        """Queue ``item``; ``alone``: decode it in a batch of its own (seeded sampling)."""
        loop = self._start()
        future: asyncio.Future[tuple[Any, int]] = loop.create_future()
        group = None if alone else next((g for g in self._groups if self._joins(g, key)), None)
        if group is None:
            group = _Group(key, alone, time.monotonic())
            self._groups.append(group)
        group.waiting.append(_Waiting(item, future))
        self._wake.set()
        return await future

    def _joins(self, group: _Group, key: Hashable) -> bool:
        return group.key == key and not group.alone and len(group.waiting) < self.max_batch

    def _start(self) -> asyncio.AbstractEventLoop:
        """The running loop, with the worker started on it (again, after a loop change)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._groups = []
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._work())
        return loop

    async def _next_batch(self) -> _Group:
        while True:
            self._groups = [g for g in self._groups if any(not w.future.done() for w in g.waiting)]
            if not self._groups:
                self._wake.clear()
                await self._wake.wait()
                continue
            group = self._groups[0]  # oldest first: groups are appended as they open
            left = group.arrived + self.wait_s - time.monotonic()
            if group.alone or len(group.waiting) >= self.max_batch or left <= 0:
                self._groups.pop(0)
                return group
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self._next_batch()
            live = [w for w in group.waiting if not w.future.done()]  # clients still waiting
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run, group.key, [w.item for w in live]
                )
            except Exception as error:  # every request of the batch gets the error
                for waiting in live:
                    if not waiting.future.done():
                        waiting.future.set_exception(error)
                continue
            self.batches += 1
            self.items += len(live)
            for waiting, result in zip(live, results, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result((result, len(live)))

    def close(self) -> None:
        """Stop the worker and its thread (queued requests are cancelled)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for group in self._groups:
            for waiting in group.waiting:
                if not waiting.future.done():
                    waiting.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
