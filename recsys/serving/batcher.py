"""Micro-batching of concurrent requests: max batch size, max wait, bounded queue.

Requests are queued on the event loop; one worker task takes whatever is waiting (up to
``max_batch_size``), waits at most ``max_wait_ms`` for more when the batch is not full,
and runs the batch function in a worker thread, so the loop keeps accepting requests
while a batch runs (and those requests form the next batch). The wait is adaptive: it is
skipped while load is light (the previous batch held one query and nothing else is
waiting), so a lone request does not pay ``max_wait_ms`` for company that is not coming;
as soon as a batch holds more than one query, later batches wait again. A full queue refuses new
work at once (:class:`QueueFullError`; the app answers 503 with Retry-After) instead of
letting latency grow without bound.

Example:
    >>> batcher = MicroBatcher(lambda xs: [x * 2 for x in xs], BatcherConfig(max_batch_size=8))
    >>> await batcher.start(); await batcher.submit(21)        # 42
    >>> await batcher.stop()
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from recsys.errors import ConfigError, SetrecError

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(SetrecError):
    """The request queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class BatcherConfig:
    """How requests are grouped."""

    max_batch_size: int = 32
    """Most queries run together in one engine call."""
    max_wait_ms: float = 2.0
    """Longest a query waits for others to join its batch when the batch is not full."""
    max_queue: int = 1024
    """Most queries waiting; beyond it requests are refused (503 + Retry-After)."""
    adaptive_wait: bool = True
    """Skip the wait while load is light (see the module docstring); False always waits."""
    inline_when_light: bool = True
    """While load is light, run a lone query's batch on the event loop itself instead of the
    worker thread: two thread hand-offs fewer (on a busy CPU each can wait for a time slice).
    The loop is blocked for that one query's compute, when nothing else is waiting."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ConfigError(f"batcher.max_batch_size: must be >= 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"batcher.max_wait_ms: must be >= 0, got {self.max_wait_ms}")
        if self.max_queue < 1:
            raise ConfigError(f"batcher.max_queue: must be >= 1, got {self.max_queue}")


class MicroBatcher(Generic[T, R]):
    """Groups submitted items into batches for ``fn``.

    Args:
        fn: takes a list of items, returns one result per item, in order. A result that
            is an ``Exception`` is raised to that item's caller only; if ``fn`` itself
            raises, every caller of the batch gets the exception.
        config: batch size, wait and queue bound.
        on_batch: called with the size of every batch run (metrics).
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], config: BatcherConfig | None = None, on_batch: Callable[[int], None] | None = None) -> None:
        self.fn = fn
        self.config = config or BatcherConfig()
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def depth(self) -> int:
        """Items waiting (not yet in a running batch)."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Start the worker task on the running loop."""
        if self.running:
            return
        self._queue = asyncio.Queue(maxsize=self.config.max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="setrec-batch")
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; waiting callers get a :class:`QueueFullError`."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            try:
                await worker
            except asyncio.CancelledError:
                pass
        if self._queue is not None:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_exception(QueueFullError("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its result."""
        return (await self.submit_many([item]))[0]

    async def submit_many(self, items: Sequence[T], return_exceptions: bool = False) -> list[R]:
        """Queue several items at once (all or none) and wait for their results, in order.

        Args:
            items: the items.
            return_exceptions: put a failed item's exception in its place instead of raising it.

        Raises:
            QueueFullError: the queue has no room for all of them.
        """
        if not self.running or self._queue is None:
            raise QueueFullError("the service is not running yet")
        free = self.config.max_queue - self._queue.qsize()
        if len(items) > free:
            raise QueueFullError(f"the request queue is full ({self.config.max_queue} queries waiting); retry shortly")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put_nowait((item, future))
        results = await asyncio.gather(*futures, return_exceptions=True)
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return list(results)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        limit = self.config.max_batch_size
        wait = self.config.max_wait_ms / 1000.0
        busy = True  # the previous batch held more than one query
        while True:
            batch = [await self._queue.get()]
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            deadline = time.monotonic() + wait
            light = self.config.adaptive_wait and len(batch) == 1 and not busy
            while len(batch) < limit and not light:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
                while len(batch) < limit and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            busy = len(batch) > 1
            live = [(item, future) for item, future in batch if not future.cancelled()]
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                items = [item for item, _ in live]
                if light and self.config.inline_when_light and self._queue.empty():
                    results = self.fn(items)
                else:
                    results = await loop.run_in_executor(self._executor, self.fn, items)
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as error:  # one failing batch must not stop the worker
                for _, future in live:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(live, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
