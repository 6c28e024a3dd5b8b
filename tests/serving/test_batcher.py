"""Micro-batcher: batches form under concurrency, order is kept, the queue is bounded, errors stay local."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from recsys.errors import ConfigError
from recsys.serving.batcher import BatcherConfig, MicroBatcher, QueueFullError


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submissions_are_batched_and_answered_in_order():
    sizes = []

    def double(items):
        time.sleep(0.01)  # while a batch runs, the next one gathers
        return [x * 2 for x in items]

    async def main():
        batcher = MicroBatcher(double, BatcherConfig(max_batch_size=8, max_wait_ms=5, max_queue=100), on_batch=sizes.append)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(i) for i in range(40)))
        await batcher.stop()
        return results

    assert run(main()) == [2 * i for i in range(40)]
    assert sum(sizes) == 40 and max(sizes) <= 8 and max(sizes) > 1


def test_a_full_queue_refuses_at_once_and_recovers():
    gate = threading.Event()

    def blocked(items):
        gate.wait(5)
        return items

    async def main():
        batcher = MicroBatcher(blocked, BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue=2))
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit("running"))
        await asyncio.sleep(0.05)  # the worker holds "running"; the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            await batcher.submit("one too many")
        with pytest.raises(QueueFullError):
            await batcher.submit_many(["a", "b", "c"])  # all or nothing
        gate.set()
        answers = [await first] + [await q for q in queued]
        after = await batcher.submit("after")
        await batcher.stop()
        return answers, after

    answers, after = run(main())
    assert answers == ["running", 0, 1] and after == "after"


def test_errors_reach_only_their_callers_and_the_worker_survives():
    def picky(items):
        if "boom" in items:
            raise RuntimeError("whole batch failed")
        return [ValueError(f"bad {x}") if x < 0 else x for x in items]

    async def main():
        batcher = MicroBatcher(picky, BatcherConfig(max_batch_size=4, max_wait_ms=20))
        await batcher.start()
        results = await asyncio.gather(batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True)
        with pytest.raises(RuntimeError, match="whole batch"):
            await batcher.submit("boom")
        mixed = await batcher.submit_many([3, -3], return_exceptions=True)
        still = await batcher.submit(5)
        await batcher.stop()
        return results, mixed, still

    results, mixed, still = run(main())
    assert results[0] == 1 and results[2] == 2 and isinstance(results[1], ValueError)
    assert mixed[0] == 3 and isinstance(mixed[1], ValueError) and still == 5


def test_submitting_before_start_and_bad_settings_are_refused():
    batcher = MicroBatcher(lambda items: items)
    with pytest.raises(QueueFullError, match="not running"):
        run(batcher.submit(1))
    with pytest.raises(ConfigError, match=r"batcher\.max_batch_size: must be >= 1"):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(ConfigError, match=r"batcher\.max_queue: must be >= 1"):
        BatcherConfig(max_queue=0)


def test_a_lone_request_does_not_wait_for_company_but_concurrent_ones_are_batched():
    sizes, threads = [], []

    def echo(items):
        threads.append((len(items), threading.current_thread().name))
        time.sleep(0.005)
        return items

    async def main():
        batcher = MicroBatcher(echo, BatcherConfig(max_batch_size=8, max_wait_ms=300), on_batch=sizes.append)
        await batcher.start()
        await batcher.submit("warm")  # the first batch after start may wait once
        begin = time.perf_counter()
        for i in range(3):
            await batcher.submit(i)
        lone = (time.perf_counter() - begin) / 3
        crowd = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
        await batcher.stop()
        fixed = MicroBatcher(lambda items: items, BatcherConfig(max_batch_size=8, max_wait_ms=100, adaptive_wait=False))
        await fixed.start()
        await fixed.submit("warm")
        begin = time.perf_counter()
        await fixed.submit(1)
        waited = time.perf_counter() - begin
        await fixed.stop()
        return lone, crowd, waited

    lone, crowd, waited = run(main())
    assert lone < 0.1, f"a lone request waited {lone * 1000:.0f} ms (max_wait_ms 300)"
    assert crowd == list(range(20)) and max(sizes) > 1
    assert threads[1][1] == threading.main_thread().name  # a lone query ran inline on the loop: no thread hand-off
    assert any(size > 1 and name.startswith("setrec-batch") for size, name in threads)  # batches run in the worker thread
    assert waited >= 0.09  # without the adaptive wait, every batch waits max_wait_ms
