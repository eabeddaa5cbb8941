"""Dynamic batching: concurrent requests gathered into one network run, results handed back to each.

A collector task takes the first waiting request, then gathers more until ``max_batch`` are together or
``max_wait_ms`` has passed since the first, and runs the batch on one inference thread (the event loop keeps
accepting and decoding meanwhile). Requests that arrive while a batch runs wait for the next one, so under load
batches fill without waiting at all. The queue is bounded: a request that finds ``max_queue`` requests waiting is
refused at once (:class:`Overloaded`, HTTP 503 with ``Retry-After``) instead of waiting without bound.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

__all__ = ["Batcher", "Overloaded"]

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class Overloaded(Exception):
    """The queue is full (or the server is stopping); ``retry_after`` is a hint in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Batcher(Generic[T, R]):
    """Gathers items submitted concurrently into batches for ``run``.

    Args:
        run: called on one thread with a batch of items; returns one result per item, in order.
        max_batch: the most items in one batch.
        max_wait_ms: how long the first item of a batch waits for others.
        max_queue: the most items waiting (not yet in a running batch); beyond it :meth:`submit` refuses.
        on_batch: called with each batch's size (metrics).
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or not max_wait_ms >= 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= 1, max_wait_ms >= 0; got {max_batch}, {max_queue}, "
                             f"{max_wait_ms}")  # fmt: skip
        self.run, self.max_batch, self.max_queue = run, max_batch, max_queue
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # bounded by submit, so that the stop mark always fits
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._batch_seconds = 0.0  # moving average, for Retry-After

    def depth(self) -> int:
        """Items waiting for a batch."""
        return max(0, self._queue.qsize() - (1 if self._closing else 0))

    def full(self) -> bool:
        """Whether a submit now would be refused."""
        return self._closing or self._queue.qsize() >= self.max_queue

    def retry_after(self) -> int:
        """Seconds after which the queue has probably drained (at least 1)."""
        batches = self._queue.qsize() / self.max_batch + 1
        return max(1, math.ceil(batches * self._batch_seconds))

    def start(self) -> None:
        """Start the collector (call from the event loop)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="multibox-infer")
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def submit(self, item: T) -> R:
        """The result of ``item``, once its batch has run.

        Raises:
            Overloaded: the queue is full or the batcher is closing.
            Exception: whatever ``run`` raised for the batch.
        """
        if self._closing:
            raise Overloaded("the server is shutting down", 1)
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"overloaded: {self._queue.qsize()} requests are already waiting", self.retry_after())
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def close(self) -> None:
        """Run what is queued, then stop (new submits are refused from now on)."""
        if self._task is None:
            return
        self._closing = True
        self._queue.put_nowait(_STOP)
        await self._task
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _gather(self, first: Any) -> list[Any]:
        """``first`` and whatever arrives within ``max_wait`` of it, up to ``max_batch`` entries."""
        loop = asyncio.get_running_loop()
        batch, deadline = [first], loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                entry = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if entry is _STOP:  # nothing is queued behind it (submits are refused once closing)
                self._queue.put_nowait(_STOP)
                break
            batch.append(entry)
        return batch

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is _STOP:
                break
            batch = await self._gather(first)
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a client that went away is skipped
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run, [item for item, _ in live])
            except Exception as e:  # the batch failed: every request of it gets the error
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            finally:
                seconds = time.perf_counter() - t0
                self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
                if self.on_batch is not None:
                    self.on_batch(len(live))
            for (_, fut), result in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
